// pool.wgsl — max pooling forward (keeping the argmax) and backward, and global average pooling.
// Twin of src/backend/cpu/pool.rs. pool_window.wgsl is prepended (window_corner, windows_holding).
//
// Bindings: 0 params (uniform), 1 src (read), 2 idx (argmax, u32), 3 dst (read_write).
// forward: one invocation per output; idx holds the winner's index iy·W + ix within its plane
//   (the first maximum on ties, scanning rows then columns, as on the CPU).
// backward: written as a gather, one invocation per input pixel: it sums dy over the windows that
//   contain it and whose winner it was, so no two invocations write one address (no atomics).
// global_avg_forward: one invocation per (image, channel) plane, its mean; global_avg_backward:
//   one invocation per input pixel, dy of its plane / (H·W). Neither binds idx.
// All: 256 invocations per workgroup, 2-D grid.

struct Params {
    planes: u32, h: u32, w: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, oh: u32,
    ow: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

fn windows() -> PoolWindows {
    return PoolWindows(p.h, p.w, p.kh, p.kw, p.sh, p.sw, p.oh, p.ow);
}

// src = x, dst = y
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.planes * p.oh * p.ow) { return; }
    let plane = (i / (p.ow * p.oh)) * p.h * p.w;
    let corner = window_corner(windows(), i % (p.ow * p.oh));
    var best = src[plane + corner];
    var at = corner;
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            let k = corner + ky * p.w + kx;
            let v = src[plane + k];
            if (v > best) {
                best = v;
                at = k;
            }
        }
    }
    dst[i] = best;
    idx[i] = at;
}

// src = dy, dst = dx
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.planes * p.h * p.w) { return; }
    let k = i % (p.h * p.w);
    let out_plane = (i / (p.h * p.w)) * p.oh * p.ow;
    let held = windows_holding(windows(), k);
    var sum = 0.0;
    for (var oy = held.lo.y; oy < held.hi.y; oy++) {
        for (var ox = held.lo.x; ox < held.hi.x; ox++) {
            let o = out_plane + oy * p.ow + ox;
            if (idx[o] == k) { sum += src[o]; }
        }
    }
    dst[i] = sum;
}

// src = x, dst = y [planes]
@compute @workgroup_size(256)
fn global_avg_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.planes) { return; }
    let size = p.h * p.w;
    var s = 0.0;
    for (var k = 0u; k < size; k++) { s += src[i * size + k]; }
    dst[i] = s / f32(size);
}

// src = dy [planes], dst = dx
@compute @workgroup_size(256)
fn global_avg_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    let size = p.h * p.w;
    if (i >= p.planes * size) { return; }
    dst[i] = src[i / size] / f32(size);
}
