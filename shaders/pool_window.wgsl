// pool_window.wgsl — where max pooling's windows lie in a plane. Prepended to pool.wgsl and
// batchnorm.wgsl (WGSL has no includes), which pool the same way: pool.wgsl a tensor in memory,
// batchnorm.wgsl the values it normalises as it goes (twin of cpu/pool.rs's forward_plane).

// An h×w plane pooled by kh×kw windows at stride sh×sw into an oh×ow plane (no padding).
struct PoolWindows {
    h: u32, w: u32,
    kh: u32, kw: u32,
    sh: u32, sw: u32,
    oh: u32, ow: u32,
}

// The index within its plane of the top-left pixel of output o's window (o within its plane).
fn window_corner(g: PoolWindows, o: u32) -> u32 {
    return (o / g.ow) * g.sh * g.w + (o % g.ow) * g.sw;
}

// The outputs whose windows hold pixel k of a plane: rows [lo.y, hi.y), columns [lo.x, hi.x),
// those oy with oy·sh ≤ iy < oy·sh + kh (and the same for columns).
struct Holding { lo: vec2<u32>, hi: vec2<u32> }

fn windows_holding(g: PoolWindows, k: u32) -> Holding {
    let iy = k / g.w;
    let ix = k % g.w;
    if (g.kh <= g.sh && g.kw <= g.sw) {
        // windows that do not overlap (2×2 at stride 2): at most the one at (iy / sh, ix / sw),
        // for half the divisions of the general case. (A pixel in a gap between windows is
        // given its neighbour, whose winner is never it.)
        let o = vec2<u32>(ix / g.sw, iy / g.sh);
        return Holding(o, select(o, o + 1u, o.x < g.ow && o.y < g.oh));
    }
    let oy_lo = select(0u, (iy + 1u - g.kh + g.sh - 1u) / g.sh, iy + 1u > g.kh);
    let ox_lo = select(0u, (ix + 1u - g.kw + g.sw - 1u) / g.sw, ix + 1u > g.kw);
    let oy_hi = min(iy / g.sh + 1u, g.oh);
    let ox_hi = min(ix / g.sw + 1u, g.ow);
    return Holding(vec2<u32>(ox_lo, oy_lo), vec2<u32>(ox_hi, oy_hi));
}
