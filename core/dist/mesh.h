/* mesh.h — the world factored into named parallel dimensions.
 *
 * Dimensions: tp (tensor), cp (context/sequence), ep (expert), dp (data),
 * pp (pipeline), any subset, each of size >= 1, whose product is the world
 * size. Ranks are laid out in Megatron's default order "tp-cp-ep-dp-pp": tp
 * varies fastest, pp slowest:
 *
 *     world_rank = tp + TP*(cp + CP*(ep + EP*(dp + DP*pp)))
 *
 * so the ranks of one tensor-parallel group are adjacent (one node), and a
 * data-parallel group strides by TP*CP*EP. ep here is an independent
 * dimension of the mesh (not folded into dp as Megatron's expert layers do).
 *
 * A mesh creates, once and collectively, a process group for every
 * combination of its dimensions ("dp", "tp", "dp cp", "tp cp", …): the ranks
 * that share their coordinates in all the other dimensions. Members of such a
 * group are ordered by world rank (for "dp cp": cp fastest, then dp). */
#ifndef MOELAB_MESH_H
#define MOELAB_MESH_H

#include "comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_mesh moe_mesh;

/* The dimension names, fastest-varying first. */
#define MOE_MESH_MAX_DIMS 5
extern const char *const moe_mesh_dim_names[MOE_MESH_MAX_DIMS]; /* tp cp ep dp pp */

/* Build a mesh over WORLD (NULL: the one-rank world) from NDIMS (name, size)
 * pairs in any order. Collective over WORLD: every rank passes the same dims.
 * Fails naming the dims when their product is not the world size, a name is
 * unknown or repeated, or a size is < 1. Keeps a reference to WORLD. */
moe_status moe_mesh_new(moe_mesh **out, moe_group *world, int ndims, const char *const *names,
                        const int *sizes);
/* The same from a spec such as "dp=2 cp=2 tp=2" (separators: spaces or
 * commas; "dp:2" also accepted). */
moe_status moe_mesh_parse(moe_mesh **out, moe_group *world, const char *spec);
/* Only read SPEC: its NDIMS (name, size) pairs in their order into NAMES
 * (pointing into moe_mesh_dim_names) and SIZES, both MOE_MESH_MAX_DIMS
 * long. Fails naming the text on bad syntax, an unknown or repeated
 * dimension or a size < 1; needs no world. */
moe_status moe_mesh_spec_parse(const char *spec, int *ndims, const char **names, int *sizes);
/* Free M and its groups (NULL is fine); release groups taken from it first
 * or after, in any order. */
void moe_mesh_free(moe_mesh *m);

/* The world the mesh covers (borrowed). */
moe_group *moe_mesh_world(const moe_mesh *m);
/* Size of dimension DIM ("dp", …): 1 for a known name the mesh lacks, -1 for
 * an unknown name. */
int moe_mesh_size(const moe_mesh *m, const char *dim);
/* This rank's coordinate along DIM: 0 for a dimension the mesh lacks, -1 for
 * an unknown name. */
int moe_mesh_coord(const moe_mesh *m, const char *dim);
/* Coordinates of WORLD_RANK, fastest first, in COORDS[MOE_MESH_MAX_DIMS]
 * (order of moe_mesh_dim_names). */
moe_status moe_mesh_coords(const moe_mesh *m, int world_rank, int *coords);
/* World rank at COORDS[MOE_MESH_MAX_DIMS] (order of moe_mesh_dim_names);
 * -1 when a coordinate is out of range. */
int moe_mesh_rank_at(const moe_mesh *m, const int *coords);
/* "dp=2 cp=2 tp=2 (8 ranks)" in a thread-local buffer (slowest first). */
const char *moe_mesh_str(const moe_mesh *m);

/* The group of the dimensions named in DIMS ("dp", "dp cp", "tp,cp"; any
 * order; dims the mesh lacks count as size 1; "" or "self": this rank
 * alone; all of them: the world). A new reference: moe_group_release it.
 * Not collective (the groups were made by moe_mesh_new). */
moe_status moe_mesh_group(moe_group **out, const moe_mesh *m, const char *dims);

#ifdef __cplusplus
}
#endif
#endif
