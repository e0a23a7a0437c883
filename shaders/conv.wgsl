// conv.wgsl — unfolding images into patch columns (im2col) and folding columns back (col2im),
// which turn the three passes of a convolution into products for gemm.wgsl.
// Twin of im2col/col2im in src/backend/cpu/conv.rs.
//
// For a chunk of `images` images starting at image `first`:
//   col[n][r][q] with r = (ci, ky, kx) and q = (oy, ox) holds x[first + n, ci, oy·sh + ky − pt, ox·sw + kx − pl]
//   (0 outside the image).
// col2im is written as a gather: each input pixel sums the column entries that were copied from
// it, so no two invocations write the same address and no atomics are needed.
//
// Bindings: 0 params (uniform), 1 src (read), 2 dst (read_write).
// Layout: one invocation per written element, 256 per workgroup, 2-D grid of workgroups.

struct Params {
    c_in: u32, h: u32, w: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, pt: u32,
    pl: u32, oh: u32, ow: u32, images: u32,
    first: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// src = x (all images), dst = col (this chunk)
@compute @workgroup_size(256)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    let q_len = p.oh * p.ow;
    let r_len = p.c_in * p.kh * p.kw;
    if (i >= p.images * r_len * q_len) { return; }
    let q = i % q_len;
    let r = (i / q_len) % r_len;
    let n = i / (q_len * r_len);
    let ox = q % p.ow;
    let oy = q / p.ow;
    let kx = r % p.kw;
    let ky = (r / p.kw) % p.kh;
    let ci = r / (p.kw * p.kh);
    // signed arithmetic for the padded border
    let iy = i32(oy * p.sh + ky) - i32(p.pt);
    let ix = i32(ox * p.sw + kx) - i32(p.pl);
    let inside = iy >= 0 && ix >= 0 && iy < i32(p.h) && ix < i32(p.w);
    let at = (((p.first + n) * p.c_in + ci) * p.h + u32(max(iy, 0))) * p.w + u32(max(ix, 0));
    dst[i] = select(0.0, src[min(at, arrayLength(&src) - 1u)], inside);
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
