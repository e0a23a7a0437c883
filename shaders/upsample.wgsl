// Nearest-neighbour upsampling by a factor s (cpu/upsample.rs is its twin).
// forward: one invocation per output value, the input value its s × s block repeats.
// backward: one invocation per input value, the sum of dy over its block (a gather: no two
//   invocations write one place).
// Both: 256 invocations per workgroup, 2-D grid.

struct Params {
    planes: u32, h: u32, w: u32, s: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// src = x [planes, h, w], dst = y [planes, s·h, s·w]
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    let ow = p.w * p.s;
    let out_plane = p.h * p.s * ow;
    if (i >= p.planes * out_plane) { return; }
    let at = i % out_plane;
    let oy = at / ow;
    let ox = at % ow;
    dst[i] = src[(i / out_plane) * p.h * p.w + (oy / p.s) * p.w + ox / p.s];
}

// src = dy [planes, s·h, s·w], dst = dx [planes, h, w]
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    let in_plane = p.h * p.w;
    if (i >= p.planes * in_plane) { return; }
    let ow = p.w * p.s;
    let at = i % in_plane;
    let corner = (i / in_plane) * in_plane * p.s * p.s + (at / p.w) * p.s * ow + (at % p.w) * p.s;
    var sum = 0.0;
    for (var dy = 0u; dy < p.s; dy++) {
        for (var dx = 0u; dx < p.s; dx++) {
            sum += src[corner + dy * ow + dx];
        }
    }
    dst[i] = sum;
}
