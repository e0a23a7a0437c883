// optim.wgsl — parameter updates, in place. Twin of adam/sgd in src/backend/cpu/optim.rs.
//
// Bindings: 0 params (uniform), 1 grad (read), 2 param, 3 state_a (Adam's m, SGD's velocity),
// 4 state_b (Adam's v) (read_write).
// Layout: one invocation per parameter, 256 per workgroup, 2-D grid.

struct Params {
    n: u32, lr: f32, beta1: f32, beta2: f32,
    eps: f32, weight_decay: f32, bias_correction1: f32, bias_correction2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> state_a: array<f32>;
@group(0) @binding(4) var<storage, read_write> state_b: array<f32>;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// m = β₁m + (1−β₁)g;  v = β₂v + (1−β₂)g²;  p −= lr · ((m/bc₁) / (√(v/bc₂) + ε) + wd · p)
@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    let g = grad[i];
    let m = p.beta1 * state_a[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * state_b[i] + (1.0 - p.beta2) * g * g;
    state_a[i] = m;
    state_b[i] = v;
    let step = (m / p.bias_correction1) / (sqrt(v / p.bias_correction2) + p.eps);
    param[i] -= p.lr * (step + p.weight_decay * param[i]);
}

// v = μv + g + wd·p;  p −= lr · v   (μ is passed as beta1)
@compute @workgroup_size(256)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    let v = p.beta1 * state_a[i] + grad[i] + p.weight_decay * param[i];
    state_a[i] = v;
    param[i] -= p.lr * v;
}
