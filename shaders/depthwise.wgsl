// depthwise.wgsl — depthwise convolution (each channel with its own KH×KW filter, MobileNet):
// forward, input gradient and weight gradient. Twin of src/backend/cpu/depthwise.rs.
//
// With KH·KW multiply-adds per output there is no product worth a GEMM: every pass is direct.
//   forward:          one invocation per output,      y[n,c,oy,ox] = b[c] + Σ w[c,ky,kx] · x[n,c,iy,ix]
//   backward_input:   one invocation per input pixel, a gather over the outputs that read it
//                     (as col2im in conv.wgsl: no two invocations write one address, no atomics)
//   backward_weight:  partial sums of dy·x for each weight (c, ky, kx) over runs of output
//                     pixels, one invocation each; reduce::sum_leading then adds the runs into dw.
//                     (db is reduce::channel_sum.)
// with iy = oy·sh + ky − pt, ix = ox·sw + kx − pl, zero outside the image.
//
// Bindings: 0 params (uniform), 1 src (x, or dy for backward_input), 2 w, 3 b, 4 dst,
//           5 dy (backward_weight).
// A batch too large for one binding is processed in windows of `images` images, each tensor bound
// from the window's first image.

struct Params {
    c: u32, h: u32, w: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, pt: u32,
    pl: u32, oh: u32, ow: u32, images: u32,
    run: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// The input pixel (iy, ix) under output (oy, ox) at tap (ky, kx), or (-1, -1) in the padding.
fn source(oy: u32, ox: u32, ky: u32, kx: u32) -> vec2<i32> {
    let iy = i32(oy * p.sh + ky) - i32(p.pt);
    let ix = i32(ox * p.sw + kx) - i32(p.pl);
    let inside = iy >= 0 && ix >= 0 && iy < i32(p.h) && ix < i32(p.w);
    return select(vec2<i32>(-1), vec2<i32>(iy, ix), inside);
}

// src = x, dst = y
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    let out_plane = p.oh * p.ow;
    if (i >= p.images * p.c * out_plane) { return; }
    let ox = i % p.ow;
    let oy = (i / p.ow) % p.oh;
    let plane = i / out_plane;          // n·C + c
    let c = plane % p.c;
    let x0 = plane * p.h * p.w;
    var s = bias[c];
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            let at = source(oy, ox, ky, kx);
            if (at.x >= 0) {
                s += wt[(c * p.kh + ky) * p.kw + kx] * src[x0 + u32(at.x) * p.w + u32(at.y)];
            }
        }
    }
    dst[i] = s;
}

// src = dy, dst = dx. Input row iy is read by output row oy at tap ky when oy·sh + ky = iy + pt:
// the first such tap is ky = (iy + pt) mod sh, with oy = (iy + pt) / sh, and each further one is
// sh taps on and one output row up. So one division per axis and invocation, none per tap
// (integer division is slow on many GPUs, and emulated lane by lane on CPU drivers).
@compute @workgroup_size(256)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    let in_plane = p.h * p.w;
    if (i >= p.images * p.c * in_plane) { return; }
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let plane = i / in_plane;
    let c = plane % p.c;
    let y0 = plane * p.oh * p.ow;
    let ty = iy + p.pt;
    let tx = ix + p.pl;
    var s = 0.0;
    var oy = i32(ty / p.sh);
    for (var ky = ty % p.sh; ky < p.kh && oy >= 0; ky += p.sh) {
        if (u32(oy) < p.oh) {
            var ox = i32(tx / p.sw);
            for (var kx = tx % p.sw; kx < p.kw && ox >= 0; kx += p.sw) {
                if (u32(ox) < p.ow) {
                    s += wt[(c * p.kh + ky) * p.kw + kx] * src[y0 + u32(oy) * p.ow + u32(ox)];
                }
                ox -= 1;
            }
        }
        oy -= 1;
    }
    dst[i] = s;
}

// src = x, dy = dy, dst = partial sums [runs][C·KH·KW]: invocation (run r, weight j) sums dy·x
// over the r-th run of `p.run` consecutive (image, output pixel) pairs, walking the pixels by
// counting (no division per pixel). Many short independent sums, no barriers: as fast on a CPU
// driver as on a GPU, where one workgroup per weight would idle when a layer has few pixels.
@compute @workgroup_size(256)
fn backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    let taps = p.kh * p.kw;
    let weights = p.c * taps;
    let out_plane = p.oh * p.ow;
    let total = p.images * out_plane;
    if (i >= weights * ((total + p.run - 1u) / p.run)) { return; }
    let j = i % weights;
    let c = j / taps;
    let ky = (j % taps) / p.kw;
    let kx = j % p.kw;
    let first = (i / weights) * p.run;
    var n = first / out_plane;
    var oy = (first % out_plane) / p.ow;
    var ox = first % p.ow;
    var s = 0.0;
    for (var t = first; t < min(first + p.run, total); t++) {
        let at = source(oy, ox, ky, kx);
        if (at.x >= 0) {
            let plane = n * p.c + c;
            s += dy[plane * out_plane + oy * p.ow + ox] * src[(plane * p.h + u32(at.x)) * p.w + u32(at.y)];
        }
        ox += 1u;
        if (ox == p.ow) {
            ox = 0u;
            oy += 1u;
            if (oy == p.oh) { oy = 0u; n += 1u; }
        }
    }
    dst[i] = s;
}
