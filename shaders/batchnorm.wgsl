// batchnorm.wgsl — batch normalisation per channel of an [N, C, HW] tensor.
// Twin of src/backend/cpu/batchnorm.rs; the formulas are derived in src/nn/batchnorm.rs.
// pool_window.wgsl is prepended (window_corner, windows_holding).
//
// A batch too large for one binding is processed in windows of whole images: the per-channel sums
// then run once per window and add to what the previous windows left (flag ACCUMULATE), and
// `count` is the batch's N·HW, not the window's.
//
// Bindings: 0 params (uniform), 1 x, 2 dy, 3 chan = [gamma | beta | mean | scale] (each [C];
// scale is the running variance for `normalize` in inference, 1/sqrt(var + eps) in training (flag
// INV_STD) and for the backward pass), 4 idx (a max pooling's positions), 5 out, 6 sums
// (read_write). Each entry point uses the subset it needs (at most six storage buffers).
// The epilogue of training is done here, as on the CPU, so that neither y, the ReLU's output nor
// their gradients are ever written whole:
// - a ReLU (flag RELU): `normalize` writes max(y, 0), and the backward pass masks dy where the y
//   it recomputes from x is not positive;
// - then a max pooling (flag POOL, geometry in params): `normalize_pool` normalises each window's
//   values as it scans them and writes only the maximum and its position; the backward passes
//   gather each pixel's gradient from the windows it won, as pool.wgsl's `backward` does.
// stats_sum, stats_var, backward_reduce: one workgroup of 256 per channel; strided per-invocation
//   sums combined by a tree reduction in workgroup memory. The variance takes two passes (the
//   mean first, then the squared deviations), which stays exact where E[x²] − E[x]² would cancel.
// normalize, backward_dx: one invocation per element; normalize_pool: one per pooled output; 256
//   per workgroup, 2-D grid.

struct Params {
    n: u32,      // images in this window
    c: u32,
    hw: u32,
    flags: u32,  // ACCUMULATE | FINISH | RELU | INV_STD | POOL
    eps: f32,
    count: u32,  // values per channel in the whole batch, N·HW
    h: u32,      // the plane (h·w = hw) and, with POOL, its pooling
    w: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    oh: u32,
    ow: u32,
    pad0: u32,
    pad1: u32,
}

const ACCUMULATE: u32 = 1u;  // add to the sums of earlier windows
const FINISH: u32 = 2u;      // the last window: turn the sums into the statistics
const RELU: u32 = 4u;        // a ReLU follows: normalize applies it, the backward pass its mask
const INV_STD: u32 = 8u;     // scale holds 1/sqrt(var + eps) (training), not the variance
const POOL: u32 = 16u;       // a max pooling follows (the ReLU's, if any): dy and idx are pooled

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> chan: array<f32>;
@group(0) @binding(4) var<storage, read_write> idx: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> sums: array<f32>;

var<workgroup> part_a: array<f32, 256>;
var<workgroup> part_b: array<f32, 256>;

// Index of the t-th value of channel c.
fn at(t: u32, c: u32) -> u32 {
    return ((t / p.hw) * p.c + c) * p.hw + t % p.hw;
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

fn gamma(c: u32) -> f32 { return chan[c]; }
fn beta(c: u32) -> f32 { return chan[p.c + c]; }
fn mean(c: u32) -> f32 { return chan[2u * p.c + c]; }
fn scale(c: u32) -> f32 { return chan[3u * p.c + c]; }

fn windows() -> PoolWindows {
    return PoolWindows(p.h, p.w, p.kh, p.kw, p.sh, p.sw, p.oh, p.ow);
}

// Sums part_a and part_b over the workgroup into element 0.
fn reduce(lid: u32) {
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if (lid < half) {
            part_a[lid] += part_a[lid + half];
            part_b[lid] += part_b[lid + half];
        }
        workgroupBarrier();
    }
}

// Sum over this window of channel c of x, and over all threads of the workgroup.
fn channel_total(c: u32, lid: u32, centre: f32, squared: bool) -> f32 {
    var s = 0.0;
    for (var t = lid; t < p.n * p.hw; t += 256u) {
        let e = x[at(t, c)] - centre;
        s += select(e, e * e, squared);
    }
    part_a[lid] = s;
    part_b[lid] = 0.0;
    reduce(lid);
    return part_a[0];
}

fn carried(i: u32) -> f32 {
    return select(0.0, sums[i], (p.flags & ACCUMULATE) != 0u);
}

// pass 1: sums[c] (+)= Σ x
@compute @workgroup_size(256)
fn stats_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    let s = channel_total(c, lid, 0.0, false);
    if (lid == 0u) { sums[c] = carried(c) + s; }
}

// pass 2: sums[C + c] (+)= Σ (x − mean)², mean = sums[c] / count; on FINISH,
// sums = [mean | biased var | 1/sqrt(var + eps)], each of length C
@compute @workgroup_size(256)
fn stats_var(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    let m = sums[c] / f32(p.count);
    let d = channel_total(c, lid, m, true);
    if (lid == 0u) {
        let total = carried(p.c + c) + d;
        sums[p.c + c] = total;
        if ((p.flags & FINISH) != 0u) {
            let v = total / f32(p.count);
            sums[c] = m;
            sums[p.c + c] = v;
            sums[2u * p.c + c] = 1.0 / sqrt(v + p.eps);
        }
    }
}

// y = gamma (x − mean) s + beta of element i (channel c), s = 1/sqrt(var + eps) from scale;
// the backward pass recomputes it exactly so, for the ReLU's mask
fn normalized(i: u32, c: u32) -> f32 {
    let s = select(1.0 / sqrt(scale(c) + p.eps), scale(c), (p.flags & INV_STD) != 0u);
    return gamma(c) * ((x[i] - mean(c)) * s) + beta(c);
}

fn relu_follows() -> bool {
    return (p.flags & RELU) != 0u;
}

// y of element i, or max(y, 0) when a ReLU follows
fn activated(i: u32, c: u32) -> f32 {
    let y = normalized(i, c);
    return select(y, max(y, 0.0), relu_follows());
}

// g, a gradient at the ReLU's output at element i, taken to y: it passes only where y > 0
fn through_relu(g: f32, i: u32, c: u32) -> f32 {
    return select(g, 0.0, relu_follows() && !(normalized(i, c) > 0.0));
}

// The gradient at the pooling's output summed over the windows that pixel k of a plane won;
// `pooled` is the index of that plane's first output.
fn won(k: u32, pooled: u32) -> f32 {
    let held = windows_holding(windows(), k);
    var g = 0.0;
    for (var oy = held.lo.y; oy < held.hi.y; oy++) {
        for (var ox = held.lo.x; ox < held.hi.x; ox++) {
            let o = pooled + oy * p.ow + ox;
            if (idx[o] == k) { g += dy[o]; }
        }
    }
    return g;
}

// dy at y of element i (channel c): dy[i], or with POOL what its windows pass down; then the
// ReLU's mask
fn grad_at_y(i: u32, c: u32) -> f32 {
    if ((p.flags & POOL) == 0u) {
        return through_relu(dy[i], i, c);
    }
    let plane = i / p.hw;
    return through_relu(won(i % p.hw, plane * p.oh * p.ow), i, c);
}

// out = y, or max(y, 0) when a ReLU follows
@compute @workgroup_size(256)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n * p.c * p.hw) { return; }
    out[i] = activated(i, (i / p.hw) % p.c);
}

// out[o] = the maximum of output o's window of y (or of max(y, 0)), idx[o] its position in the
// plane (the first maximum on ties, scanning rows then columns, as pool.wgsl and the CPU)
@compute @workgroup_size(256)
fn normalize_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let o = element(wid, nwg, lid);
    let out_plane = p.oh * p.ow;
    if (o >= p.n * p.c * out_plane) { return; }
    let plane = o / out_plane;
    let c = plane % p.c;
    let corner = window_corner(windows(), o % out_plane);
    var best = activated(plane * p.hw + corner, c);
    var winner = corner;
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            let k = corner + ky * p.w + kx;
            let v = activated(plane * p.hw + k, c);
            if (v > best) {
                best = v;
                winner = k;
            }
        }
    }
    out[o] = best;
    idx[o] = winner;
}

// sums (+)= [dβ = Σ dy | dγ = Σ dy · x̂], x̂ = (x − mean) · scale, dy at y (grad_at_y). With a
// pooling too, every element in the same order as without it (its zeros too), so that the sums
// are those of the layers run one by one, bit for bit.
@compute @workgroup_size(256)
fn backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    let count = p.n * p.hw;
    var sb = 0.0;
    var sg = 0.0;
    for (var t = lid; t < count; t += 256u) {
        let k = at(t, c);
        let g = grad_at_y(k, c);
        sb += g;
        sg += g * (x[k] - mean(c)) * scale(c);
    }
    part_a[lid] = sb;
    part_b[lid] = sg;
    reduce(lid);
    if (lid == 0u) {
        sums[c] = carried(c) + part_a[0];
        sums[p.c + c] = carried(p.c + c) + part_b[0];
    }
}

// out = dx = γ · scale / M · (M · dy − dβ − x̂ · dγ), with dβ, dγ from backward_reduce
@compute @workgroup_size(256)
fn backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n * p.c * p.hw) { return; }
    let c = (i / p.hw) % p.c;
    let m = f32(p.count);
    let xhat = (x[i] - mean(c)) * scale(c);
    out[i] = gamma(c) * scale(c) / m * (m * grad_at_y(i, c) - sums[c] - xhat * sums[p.c + c]);
}
