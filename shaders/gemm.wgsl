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
// same B seen as vec4s), 5 bias (read: one value per row of C, read when p.epilogue asks).
// Epilogue (p.epilogue, bit flags; Twin of cpu/gemm.rs's `Epilogue`): each value of C, as it is
// stored, gets its row's bias added (ROW_BIAS), then max(0, ·) (RELU), so that a convolution's
// output is written once, not written by the product and then read and written by a bias pass.
// POOL: then the maximum of each row's 4 columns j0..j0+3 (a 2×2 pooling window, as conv.wgsl's
// pooled im2col lays them out) is stored, at column j0/4 of C (c_rs and c_batch count pooled
// columns; N is a multiple of 4).
// The override constant VEC4_B (a second pipeline, `gemm_vec4b`) loads each row of 4 B values as
// one vec4 through b4; the host picks it when B's rows are contiguous and everything is aligned
// to 4 (b_cs = 1; N, b_off, b_klo, b_khi, b_batch multiples of 4), as for the convolution passes.
//
// Two kernels, same bindings and the same layout of work: each invocation computes a 4×4 block of
// C in four vec4 registers; workgroups of 16×16 invocations cover 64×64 of C; dispatch
// (ceil(N/64), ceil(M/64), batch).
// gemm: registers only; each invocation reads its own A and B values from memory (16
//   multiply-adds per 8 loads). Edge rows/columns read a clamped (valid) address and are not
//   stored, so every access stays in bounds without branches in the inner loop. Fastest on
//   CPU-emulated GPUs (lavapipe), where workgroup memory is plain memory and barriers are costly.
// gemm_tiled: the workgroup stages 64×16 of A and 16×64 of B in workgroup memory per step of 16
//   along K (each invocation loads one vec4 of each, then all read the tiles), so each value
//   loaded from memory serves 64 multiply-adds instead of 4: the classic tiled GEMM of real GPUs.
//   Out-of-range rows, columns and k load zeros.

struct Params {
    m: u32, n: u32, k_hi: u32, k_lo: u32,
    a_off: u32, a_rs: u32, a_khi: u32, a_klo: u32,
    b_off: u32, b_cs: u32, b_khi: u32, b_klo: u32,
    c_off: u32, c_rs: u32, a_batch: u32, b_batch: u32,
    c_batch: u32, accumulate: u32, epilogue: u32, pad1: u32,
}

const ROW_BIAS: u32 = 1u;
const RELU: u32 = 2u;
const POOL: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;

override VEC4_B: bool = false;

// A value of C as it is stored: its row's bias added, then max(0, ·), as p.epilogue asks.
fn epilogue(v: f32, i: u32) -> f32 {
    var out = v;
    if ((p.epilogue & ROW_BIAS) != 0u) { out += bias[i]; }
    if ((p.epilogue & RELU) != 0u) { out = max(out, 0.0); }
    return out;
}

// C(z, i0 + t, j0 + u) (+)= rows[t][u] for the rows and columns inside C
fn store_block(z: u32, i0: u32, j0: u32, rows: array<vec4<f32>, 4>) {
    for (var t = 0u; t < 4u; t++) {
        let i = i0 + t;
        if (i >= p.m) { break; }
        if ((p.epilogue & POOL) != 0u) {
            if (j0 >= p.n) { break; }
            let r = rows[t];
            let v = max(max(epilogue(r.x, i), epilogue(r.y, i)), max(epilogue(r.z, i), epilogue(r.w, i)));
            c[p.c_off + z * p.c_batch + i * p.c_rs + j0 / 4u] = v;
            continue;
        }
        for (var u = 0u; u < 4u; u++) {
            let j = j0 + u;
            if (j >= p.n) { break; }
            let at = p.c_off + z * p.c_batch + i * p.c_rs + j;
            var v = rows[t][u];
            if (p.accumulate != 0u) { v += c[at]; }
            c[at] = epilogue(v, i);
        }
    }
}

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
    store_block(z, i0, j0, array<vec4<f32>, 4>(acc0, acc1, acc2, acc3));
}

// A(z, i, k) and B(z, k, j) with the two-level index flattened, k = kh·k_lo + kl; zero outside.
fn load_a(z: u32, i: u32, k: u32) -> f32 {
    if (i >= p.m || k >= p.k_hi * p.k_lo) { return 0.0; }
    return a[p.a_off + z * p.a_batch + i * p.a_rs + (k / p.k_lo) * p.a_khi + (k % p.k_lo) * p.a_klo];
}
fn load_b(z: u32, k: u32, j: u32) -> f32 {
    if (j >= p.n || k >= p.k_hi * p.k_lo) { return 0.0; }
    return b[p.b_off + z * p.b_batch + j * p.b_cs + (k / p.k_lo) * p.b_khi + (k % p.k_lo) * p.b_klo];
}

const TILE_K: u32 = 16u;
// a_tile[k][r] = A rows 4r..4r+3 of the tile at step k; b_tile[k][q] = B columns 4q..4q+3
var<workgroup> a_tile: array<array<vec4<f32>, 16>, TILE_K>;
var<workgroup> b_tile: array<array<vec4<f32>, 16>, TILE_K>;

@compute @workgroup_size(16, 16, 1)
fn gemm_tiled(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let z = wid.z;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let t = lid.y * 16u + lid.x;
    // what this invocation loads: A rows 4·(t/16).. at k = t%16, B columns 4·(t%16).. at k = t/16
    let ak = t % 16u;
    let ar = row0 + 4u * (t / 16u);
    let bk = t / 16u;
    let bc = col0 + 4u * (t % 16u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k_hi * p.k_lo; k0 += TILE_K) {
        a_tile[ak][t / 16u] = vec4<f32>(load_a(z, ar, k0 + ak), load_a(z, ar + 1u, k0 + ak),
                                        load_a(z, ar + 2u, k0 + ak), load_a(z, ar + 3u, k0 + ak));
        b_tile[bk][t % 16u] = vec4<f32>(load_b(z, k0 + bk, bc), load_b(z, k0 + bk, bc + 1u),
                                        load_b(z, k0 + bk, bc + 2u), load_b(z, k0 + bk, bc + 3u));
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let av = a_tile[kk][lid.y];
            let bv = b_tile[kk][lid.x];
            acc0 += av.x * bv;
            acc1 += av.y * bv;
            acc2 += av.z * bv;
            acc3 += av.w * bv;
        }
        workgroupBarrier();
    }
    store_block(z, row0 + 4u * lid.y, col0 + 4u * lid.x,
                array<vec4<f32>, 4>(acc0, acc1, acc2, acc3));
}
