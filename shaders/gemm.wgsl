// gemm.wgsl — C (+)= A · B, the workhorse of dense layers and of all three convolution passes.
// Twin of src/backend/cpu/gemm.rs.
//
// Matrices are strided views (a transpose is a view with its strides swapped), with a batch index
// z and a two-level inner index k = (k_hi, k_lo), so that one dispatch can, for instance, sum
// dW = Σₙ Σₚ dY[n][co][p] · col[n][r][p] over images n and pixels p without copying anything:
//   A(z, i, k) = a[a_off + z·a_batch + i·a_rs + k_hi·a_khi + k_lo·a_klo]
//   B(z, k, j) = b[b_off + z·b_batch + j·b_cs + k_hi·b_khi + k_lo·b_klo]
//   C(z, i, j) = c[c_off + z·c_batch + i·c_rs + j]
//
// Bindings: 0 params (uniform), 1 a (read), 2 b (read), 3 c (read_write), 4 b4 (read: the
// same B seen as vec4s).
// The override constant VEC4_B (a second pipeline, `gemm_vec4b`) loads each row of 4 B values as
// one vec4 through b4; the host picks it when B's rows are contiguous and everything is aligned
// to 4 (b_cs = 1; N, b_off, b_klo, b_khi, b_batch multiples of 4), as for the convolution passes.
// Layout: each invocation computes a 4×4 block of C in four vec4 registers (16 multiply-adds per
// 8 loads); workgroups of 16×16 invocations cover 64×64 of C; dispatch
// (ceil(N/64), ceil(M/64), batch). Edge rows/columns read a clamped (valid) address and are not
// stored, so every access stays in bounds without branches in the inner loop.

struct Params {
    m: u32, n: u32, k_hi: u32, k_lo: u32,
    a_off: u32, a_rs: u32, a_khi: u32, a_klo: u32,
    b_off: u32, b_cs: u32, b_khi: u32, b_klo: u32,
    c_off: u32, c_rs: u32, a_batch: u32, b_batch: u32,
    c_batch: u32, accumulate: u32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> b4: array<vec4<f32>>;

override VEC4_B: bool = false;

@compute @workgroup_size(16, 16, 1)
fn gemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i0 = gid.y * 4u;
    let j0 = gid.x * 4u;
    if (i0 >= p.m || j0 >= p.n) { return; }
    let z = gid.z;
    // row offsets of A and column offsets of B, clamped to the last valid row/column
    var ar: array<u32, 4>;
    var bc: array<u32, 4>;
    for (var t = 0u; t < 4u; t++) {
        ar[t] = p.a_off + z * p.a_batch + min(i0 + t, p.m - 1u) * p.a_rs;
        bc[t] = p.b_off + z * p.b_batch + min(j0 + t, p.n - 1u) * p.b_cs;
    }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kh = 0u; kh < p.k_hi; kh++) {
        let ak = kh * p.a_khi;
        let bk = kh * p.b_khi;
        for (var kl = 0u; kl < p.k_lo; kl++) {
            let ka = ak + kl * p.a_klo;
            let kb = bk + kl * p.b_klo;
            var bv: vec4<f32>;
            if (VEC4_B) {
                bv = b4[(bc[0] + kb) / 4u];
            } else {
                bv = vec4<f32>(b[bc[0] + kb], b[bc[1] + kb], b[bc[2] + kb], b[bc[3] + kb]);
            }
            acc0 += a[ar[0] + ka] * bv;
            acc1 += a[ar[1] + ka] * bv;
            acc2 += a[ar[2] + ka] * bv;
            acc3 += a[ar[3] + ka] * bv;
        }
    }
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var t = 0u; t < 4u; t++) {
        let i = i0 + t;
        if (i >= p.m) { break; }
        for (var u = 0u; u < 4u; u++) {
            let j = j0 + u;
            if (j >= p.n) { break; }
            let at = p.c_off + z * p.c_batch + i * p.c_rs + j;
            var v = rows[t][u];
            if (p.accumulate != 0u) { v += c[at]; }
            c[at] = v;
        }
    }
}
