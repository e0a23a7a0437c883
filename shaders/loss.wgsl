// loss.wgsl — the fused sigmoid + binary cross-entropy on logits, and its gradient.
// Twin of bce_with_logits in src/backend/cpu/loss.rs; derived in src/nn/loss.rs.
//
// Bindings: 0 params (uniform), 1 z (logits, read), 2 y (targets, read), 3 grad (read_write),
// 4 loss (one value, read_write).
// Layout: a single workgroup of 256; each invocation handles a strided share of the batch and
// writes its gradients; a tree reduction in workgroup memory gives the mean loss.

struct Params {
    n: u32, pos_weight: f32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;

var<workgroup> partial: array<f32, 256>;

// log(1 + e^v) without overflow
fn softplus(v: f32) -> f32 {
    return max(v, 0.0) + log(1.0 + exp(-abs(v)));
}

fn sigmoid(v: f32) -> f32 {
    let e = exp(-abs(v));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
}

@compute @workgroup_size(256)
fn bce_with_logits(@builtin(local_invocation_index) lid: u32) {
    let n = f32(p.n);
    let w = p.pos_weight;
    var s = 0.0;
    for (var i = lid; i < p.n; i += 256u) {
        let zi = z[i];
        let yi = y[i];
        s += w * yi * softplus(-zi) + (1.0 - yi) * softplus(zi);
        let sg = sigmoid(zi);
        grad[i] = (w * yi * (sg - 1.0) + (1.0 - yi) * sg) / n;
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if (lid < half) { partial[lid] += partial[lid + half]; }
        workgroupBarrier();
    }
    if (lid == 0u) { loss[0] = partial[0] / n; }
}
