## core/moe/layer.mk — token dispatch, grouped experts, the MoE layer (issue 6).
