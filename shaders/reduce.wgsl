// reduce.wgsl — sums: per channel of an [N, C, HW] tensor (bias gradients of convolution and
// dense layers), and over the leading index of stacked partial results. Both can add to what dst
// holds (`accumulate`), so that a batch processed in windows sums over all of them.
//
// Bindings: 0 params (uniform), 1 src (read), 2 dst (read_write).
// channel_sum: one workgroup of 256 per channel; each invocation sums a strided share of the
//   channel's N·HW values, then a tree reduction in workgroup memory combines the 256 partials.
// sum_squares: dst[c] = Σ src², one workgroup of 256 likewise (c = the tensor's slot in dst).
// sum_leading: one invocation per output element, 256 per workgroup, 2-D grid.

struct Params {
    n: u32, c: u32, hw: u32, accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

var<workgroup> partial: array<f32, 256>;

// dst[c] (+)= Σ over n, q of src[(n·C + c)·HW + q]
@compute @workgroup_size(256)
fn channel_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    let count = p.n * p.hw;
    var s = 0.0;
    for (var t = lid; t < count; t += 256u) {
        s += src[((t / p.hw) * p.c + c) * p.hw + t % p.hw];
    }
    partial[lid] = s;
    tree_sum(lid);
    if (lid == 0u) { dst[c] = select(0.0, dst[c], p.accumulate != 0u) + partial[0]; }
}

// Sums `partial` over the workgroup into partial[0].
fn tree_sum(lid: u32) {
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if (lid < half) { partial[lid] += partial[lid + half]; }
        workgroupBarrier();
    }
}

// dst[c] = Σ over i < n of src[i]²
@compute @workgroup_size(256)
fn sum_squares(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.n; i += 256u) { s += src[i] * src[i]; }
    partial[lid] = s;
    tree_sum(lid);
    if (lid == 0u) { dst[p.c] = partial[0]; }
}

// dst[j] (+)= Σ over g < n of src[g·C + j], for j < C
@compute @workgroup_size(256)
fn sum_leading(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let j = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (j >= p.c) { return; }
    var s = 0.0;
    for (var g = 0u; g < p.n; g++) { s += src[g * p.c + j]; }
    if (p.accumulate != 0u) { s += dst[j]; }
    dst[j] = s;
}
