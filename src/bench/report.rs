//! The result of `fracture-cnn bench`: one object for scripts (`--json`), a table for people.

use super::BackendReport;
use crate::backend::gpu::KernelTime;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One figure of a backend's report.
type Figure = fn(&BackendReport) -> f64;

/// Both backends' measurements of one model at one size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub batch_size: usize,
    pub image_size: usize,
    pub infer_batch_size: usize,
    pub warmup: usize,
    pub repeats: usize,
    /// The processor, as the OS names it, and the CPU backend's threads.
    pub cpu: String,
    pub threads: usize,
    pub backends: Backends,
    /// Why a backend is missing, and other remarks.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Backends {
    pub cpu: Option<BackendReport>,
    pub gpu: Option<BackendReport>,
}

/// What a `bench` child process prints: its backend's report, or why it has none.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChildResult {
    Report(Box<BackendReport>),
    Unavailable(String),
}

fn ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}"))
}

fn rate(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.1}"))
}

/// GPU time over CPU time, the way a reader compares them: "3.2× slower" or "2.0× faster".
fn ratio(cpu: Option<f64>, gpu: Option<f64>) -> String {
    match (cpu, gpu) {
        (Some(c), Some(g)) if c > 0.0 && g > 0.0 && g >= c => format!("{:.1}× slower", g / c),
        (Some(c), Some(g)) if c > 0.0 && g > 0.0 => format!("{:.1}× faster", c / g),
        _ => String::new(),
    }
}

impl Report {
    /// The side-by-side table printed on the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let (cpu, gpu) = (self.backends.cpu.as_ref(), self.backends.gpu.as_ref());
        let _ = writeln!(
            out,
            "{} at {}×{}, training batch {}, inference batch {}: median of {} runs after {} warm-up",
            self.model,
            self.image_size,
            self.image_size,
            self.batch_size,
            self.infer_batch_size,
            self.repeats,
            self.warmup
        );
        let _ = writeln!(out, "machine: {}, {} threads", self.cpu, self.threads);
        for (label, b) in [("CPU", cpu), ("GPU", gpu)] {
            if let Some(b) = b {
                let _ = writeln!(out, "{label}: {} (op times: {})", b.device, b.timer);
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let cols: Vec<(&str, &BackendReport)> = [("cpu", cpu), ("gpu", gpu)]
            .into_iter()
            .filter_map(|(l, b)| Some((l, b?)))
            .collect();
        let both = cols.len() == 2;
        let mut header = format!("\n{:<44}", "op");
        for (label, _) in &cols {
            let _ = write!(header, " {:>10} {:>8}", format!("{label} ms"), "GFLOP/s");
        }
        if both {
            header.push_str("  gpu vs cpu");
        }
        let _ = writeln!(out, "{header}");
        // a row: its name, then (ms, GFLOP/s) per backend
        let mut row = |name: &str, cells: Vec<(Option<f64>, Option<f64>)>| {
            let mut line = format!("{name:<44}");
            for (t, r) in &cells {
                let _ = write!(line, " {:>10} {:>8}", ms(*t), rate(*r));
            }
            if let [(cpu, _), (gpu, _)] = cells[..] {
                let _ = write!(line, "  {}", ratio(cpu, gpu));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        };
        let names: Vec<String> = cols.first().map_or(vec![], |(_, b)| {
            b.ops.iter().map(|o| o.name.clone()).collect()
        });
        for (i, name) in names.iter().enumerate() {
            let cells = cols
                .iter()
                .map(|(_, b)| {
                    b.ops
                        .get(i)
                        .map_or((None, None), |o| (Some(o.ms), o.gflops))
                })
                .collect();
            row(name, cells);
        }
        row("", vec![]);
        let first = cols.iter().map(|(_, b)| (Some(b.first_step_ms), None));
        row("first training step (with set-up)", first.collect());
        let step = format!("training step, batch {}", self.batch_size);
        let cells = cols
            .iter()
            .map(|(_, b)| (Some(b.train_step_ms), Some(b.train_gflops)));
        row(&step, cells.collect());
        let infer = format!("inference, batch {}", self.infer_batch_size);
        let cells = cols
            .iter()
            .map(|(_, b)| (Some(b.infer_batch_ms), Some(b.infer_gflops)));
        row(&infer, cells.collect());
        let figures: [(&str, Figure); 3] = [
            ("training images/s", |b| b.train_images_per_s),
            ("inference images/s", |b| b.infer_images_per_s),
            ("peak resident memory, MiB", |b| b.peak_rss_mib),
        ];
        for (name, f) in figures {
            let mut line = format!("{name:<44}");
            for (_, b) in &cols {
                let _ = write!(line, " {:>10.1} {:>8}", f(b), "");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if let Some((c, gemm, peak)) = cpu.and_then(|c| Some((c, c.gemm_gflops?, c.peak_gflops?))) {
            let _ = writeln!(
                out,
                "\nCPU GEMM, 1024×1024×1024: {gemm:.1} GFLOP/s = {:.0}% of the measured peak of {peak:.1} GFLOP/s\n\
                 (peak: every thread running independent fused multiply-adds of the GEMM kernel's width)",
                100.0 * gemm / peak
            );
            if let Some(kernel) = c.micro_kernel_gflops {
                let _ = writeln!(
                    out,
                    "its micro-kernel alone, operands in cache: {kernel:.1} GFLOP/s = {:.0}% of the peak \
                     (the rest of the gap is packing and memory)",
                    100.0 * kernel / peak
                );
            }
            let _ = writeln!(out, "{}", step_against_peak(c, peak));
        }
        if let Some(kernels) = gpu.and_then(|g| g.kernels.as_ref()) {
            let _ = writeln!(
                out,
                "\nGPU time of one training step by kernel (timestamp queries):"
            );
            out.push_str(&render_kernel_times(kernels));
        }
        out
    }
}

/// How much of the machine the training step uses: its FLOP rate as a share of the measured
/// peak, and the floor its arithmetic puts under it (the step's time were every cycle of every
/// thread a fused multiply-add). Convolutions are counted as direct ones, so a step with Winograd
/// layers, which multiply less, could in principle go below that floor.
fn step_against_peak(b: &BackendReport, peak: f64) -> String {
    let floor_ms = b.train_step_ms * b.train_gflops / peak;
    format!(
        "training step: {:.1} GFLOP/s = {:.0}% of the peak; at the peak it would take {floor_ms:.1} ms \
         (its arithmetic counted as direct convolutions)",
        b.train_gflops,
        100.0 * b.train_gflops / peak
    )
}

/// One line per kernel: launches, GPU time and share of the total, slowest first.
pub fn render_kernel_times(kernels: &[KernelTime]) -> String {
    let total: f64 = kernels.iter().map(|k| k.ms).sum();
    let mut out = String::new();
    for k in kernels {
        let _ = writeln!(
            out,
            "  {:<30} {:>7} launches {:>10.2} ms {:>5.1}%",
            k.kernel,
            k.launches,
            k.ms,
            100.0 * k.ms / total.max(f64::MIN_POSITIVE)
        );
    }
    let _ = writeln!(out, "  {:<30} {:>16} {:>10.2} ms", "total", "", total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_is_set_against_the_peak_with_its_arithmetic_floor() {
        let b = BackendReport {
            device: "cpu".into(),
            first_step_ms: 0.0,
            timer: "wall clock".into(),
            train_step_ms: 160.0,
            train_images_per_s: 200.0,
            train_gflops: 50.0,
            infer_batch_ms: 0.0,
            infer_images_per_s: 0.0,
            infer_gflops: 0.0,
            peak_rss_mib: 0.0,
            ops: vec![],
            gemm_gflops: Some(150.0),
            micro_kernel_gflops: None,
            peak_gflops: Some(200.0),
            kernels: None,
        };
        let line = step_against_peak(&b, 200.0);
        // 50 of 200 GFLOP/s is a quarter; a quarter of 160 ms is the floor
        assert!(line.contains("50.0 GFLOP/s = 25% of the peak"), "{line}");
        assert!(line.contains("it would take 40.0 ms"), "{line}");
    }
}
