// elementwise.wgsl — one value in, one value out: addition, copy, ReLU, dropout, per-channel bias, moving averages,
// scaling.
// Twin of src/backend/cpu/elementwise.rs.
//
// Bindings: 0 params (uniform), 1 a (read), 2 b (read), 3 out (read_write); each entry point uses
// the subset it needs. Layout: one invocation per element, 256 per workgroup, on a 2-D grid of
// workgroups (x up to 65535, then y) so that tensors of any size fit the dispatch limits.

struct Params {
    n: u32,      // number of elements
    c: u32,      // channels (add_channel_bias)
    hw: u32,     // elements per channel plane (add_channel_bias)
    key: u32,    // dropout: the key of backend::hash for this call's seed
    f0: f32,     // dropout: p; ema: momentum; scale: the factor
    f1: f32,     // ema: scale of the batch value
    offset: u32, // dropout: index of element 0 in the whole tensor (when run on a window of it)
    relu: u32,   // add_channel_bias: 1 to apply max(0, ·) after the bias (a fused ReLU)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// The lowbias32 hash of backend/hash.rs, bit for bit.
fn lowbias32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn uniform01(key: u32, i: u32) -> f32 {
    return f32(lowbias32(i ^ key) >> 8u) * (1.0 / 16777216.0);
}

// out = a + b   (the merge of a residual block; the sum of two gradients of one tensor)
@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] + b[i];
}

// out = a
@compute @workgroup_size(256)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i];
}

// out = max(a, 0)
@compute @workgroup_size(256)
fn relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = max(a[i], 0.0);
}

// out = b where a > 0 (a = the ReLU's input, b = dy)
@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = select(0.0, b[i], a[i] > 0.0);
}

// out = a * keep / (1 - p), keep = uniform01(key, offset + i) >= p
// (forward with a = x, backward with a = dy)
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let keep = uniform01(p.key, p.offset + i) >= p.f0;
    out[i] = select(0.0, a[i] / (1.0 - p.f0), keep);
}

// out[i] += a[channel of i] for an [N, C, HW] tensor; then max(0, ·) when p.relu is 1
@compute @workgroup_size(256)
fn add_channel_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let v = out[i] + a[(i / p.hw) % p.c];
    out[i] = select(v, max(v, 0.0), p.relu == 1u);
}

// out *= f0   (gradient clipping)
@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] *= p.f0;
}

// out = (1 - m) out + m * scale * a   (running statistics of batch norm)
@compute @workgroup_size(256)
fn ema(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = (1.0 - p.f0) * out[i] + p.f0 * p.f1 * a[i];
}
