// conv.wgsl — unfolding images into patch columns (im2col) and folding columns back (col2im),
// which turn the three passes of a convolution into products for gemm.wgsl.
// Twin of im2col/col2im in src/backend/cpu/conv/unfold.rs.
//
// For a chunk of `images` images starting at image `first`:
//   col[n][r][q] with r = (ci, ky, kx) and q = (oy, ox) holds x[first + n, ci, oy·sh + ky − pt, ox·sw + kx − pl]
//   (0 outside the image).
// col2im is written as a gather: each input pixel sums the column entries that were copied from
// it, so no two invocations write the same address and no atomics are needed.
// With p.pooled (a 2×2 max pooling at stride 2 follows, in inference), im2col lays the columns out
// window by window: q = 4·(py·pw + px) + 2·dy + dx holds output pixel (2·py + dy, 2·px + dx)
// (ph = oh/2, pw = ow/2: a last odd row or column, which the pooling drops, is not unfolded), so
// that gemm.wgsl's POOL epilogue finds each window in 4 adjacent columns.
//
// Bindings: 0 params (uniform), 1 src (read), 2 dst (read_write).
// Layout: 256 invocations per workgroup, 2-D grid of workgroups; im2col writes 4 consecutive
// elements per invocation, col2im one.

struct Params {
    c_in: u32, h: u32, w: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, pt: u32,
    pl: u32, oh: u32, ow: u32, images: u32,
    first: u32, pooled: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// Where col element i reads from: its image n, patch row r = (ci, ky, kx) and output pixel (oy, ox).
struct Coords { n: u32, ci: u32, ky: u32, kx: u32, oy: u32, ox: u32 }

// Columns per image: its output pixels (only those the pooling reads when p.pooled).
fn q_len() -> u32 {
    if (p.pooled != 0u) { return 4u * (p.oh / 2u) * (p.ow / 2u); }
    return p.oh * p.ow;
}

fn coords(i: u32) -> Coords {
    let r_len = p.c_in * p.kh * p.kw;
    let q = i % q_len();
    let r = (i / q_len()) % r_len;
    var oy = q / p.ow;
    var ox = q % p.ow;
    if (p.pooled != 0u) {
        let window = q / 4u;
        oy = 2u * (window / (p.ow / 2u)) + (q % 4u) / 2u;
        ox = 2u * (window % (p.ow / 2u)) + q % 2u;
    }
    return Coords(i / (q_len() * r_len), r / (p.kw * p.kh), (r / p.kw) % p.kh, r % p.kw, oy, ox);
}

// The value of col at c: the input pixel under the patch, 0 in the padded border.
fn unfolded(c: Coords) -> f32 {
    // signed arithmetic for the padded border
    let iy = i32(c.oy * p.sh + c.ky) - i32(p.pt);
    let ix = i32(c.ox * p.sw + c.kx) - i32(p.pl);
    let inside = iy >= 0 && ix >= 0 && iy < i32(p.h) && ix < i32(p.w);
    let at = (((p.first + c.n) * p.c_in + c.ci) * p.h + u32(max(iy, 0))) * p.w + u32(max(ix, 0));
    return select(0.0, src[min(at, arrayLength(&src) - 1u)], inside);
}

// src = x (all images), dst = col (this chunk). Each invocation writes IM2COL_RUN consecutive
// values: the integer divisions that locate an element (slow on many GPUs, and emulated lane by
// lane on CPU drivers) are done once per run, and the next pixel is found by counting.
const IM2COL_RUN: u32 = 4u;

@compute @workgroup_size(256)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let first = index(wid, nwg, lid) * IM2COL_RUN;
    let total = p.images * p.c_in * p.kh * p.kw * q_len();
    var c = coords(first);
    for (var i = first; i < min(first + IM2COL_RUN, total); i++) {
        dst[i] = unfolded(c);
        if (p.pooled != 0u) {
            // a run is one window (runs and columns per image are multiples of 4): right,
            // then down-left, then right
            if (c.ox % 2u == 0u) {
                c.ox += 1u;
            } else {
                c.ox -= 1u;
                c.oy += 1u;
            }
            continue;
        }
        c.ox += 1u;
        if (c.ox == p.ow) {
            c.ox = 0u;
            c.oy += 1u;
            if (c.oy == p.oh) { c = coords(i + 1u); }  // the next patch row
        }
    }
}

// src = dcol (this chunk), dst = dx (all images; this chunk's images are overwritten)
@compute @workgroup_size(256)
fn col2im(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    let plane = p.h * p.w;
    if (i >= p.images * p.c_in * plane) { return; }
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let ci = (i / plane) % p.c_in;
    let n = i / (plane * p.c_in);
    let q_len = p.oh * p.ow;
    let r_len = p.c_in * p.kh * p.kw;
    var sum = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let ty = i32(iy + p.pt) - i32(ky);          // = oy · sh
        if (ty < 0 || ty % i32(p.sh) != 0) { continue; }
        let oy = u32(ty) / p.sh;
        if (oy >= p.oh) { continue; }
        for (var kx = 0u; kx < p.kw; kx++) {
            let tx = i32(ix + p.pl) - i32(kx);
            if (tx < 0 || tx % i32(p.sw) != 0) { continue; }
            let ox = u32(tx) / p.sw;
            if (ox >= p.ow) { continue; }
            let r = (ci * p.kh + ky) * p.kw + kx;
            sum += src[(n * r_len + r) * q_len + oy * p.ow + ox];
        }
    }
    dst[((p.first + n) * p.c_in + ci) * plane + iy * p.w + ix] = sum;
}
