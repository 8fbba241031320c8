## core/moe/local.mk — routers, aux losses, metrics (issue 4): sources and tests.
