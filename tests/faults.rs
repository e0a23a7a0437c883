//! Bad input and faults, as a user meets them: each case gets one clear message naming the file or
//! flag (exit 1 for runtime errors, 2 for usage errors, never a panic), and no fault loses a
//! checkpoint already written.

mod common;

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::Backend;
use fracture_cnn::nn::{Model, ModelSpec};
use fracture_cnn::train;
use fracture_cnn::{checkpoint, faults};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::{run, train_args, BIN};

/// Exit code and stderr; asserts that nothing panicked.
fn failure(o: &Output) -> (Option<i32>, String) {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    (o.status.code(), err)
}

/// A small data set of 16×16 images in `root`.
fn dataset(root: &Path, per_class: usize) -> PathBuf {
    let data = root.join("data");
    common::images::write_separable_dataset(&data, per_class, 16);
    data
}

fn run_dir(out: &Path) -> PathBuf {
    out.join("fracturenet-001")
}

#[test]
fn data_folder_faults_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, err) = failure(&run(&train_args(&empty, &out, &[])));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no train/ folder") && err.contains("empty"),
        "{err}"
    );

    // every fractured training image unreadable: nothing usable of that class is left
    let data = dataset(dir.path(), 3);
    for entry in std::fs::read_dir(data.join("train/fractured")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"").unwrap();
    }
    let (code, err) = failure(&run(&train_args(&data, &out, &[])));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("warning: skipping") && err.contains("img000.png"),
        "{err}"
    );
    assert!(
        err.contains("3 of the train images could not be read"),
        "{err}"
    );
    assert!(err.contains("no usable images of one class"), "{err}");
    assert!(
        !run_dir(&out).exists(),
        "a refused run leaves no run folder"
    );
}

#[test]
fn odd_images_are_read_or_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 3);
    let frac = data.join("train/fractured");
    // palette (GIF), 1×1, 16-bit RGBA, and a huge 10000×10000 scan all train
    let gif = image::RgbaImage::from_pixel(9, 7, image::Rgba([200, 200, 200, 255]));
    gif.save(frac.join("palette.gif")).unwrap();
    image::GrayImage::from_pixel(1, 1, image::Luma([210]))
        .save(frac.join("dot.png"))
        .unwrap();
    image::ImageBuffer::from_pixel(5, 5, image::Rgba([50000u16, 50000, 50000, 65535]))
        .save(frac.join("rgba16.png"))
        .unwrap();
    image::GrayImage::from_pixel(10_000, 10_000, image::Luma([200]))
        .save(frac.join("huge.png"))
        .unwrap();
    // a truncated PNG and a text file named .jpg are skipped by name
    let whole = std::fs::read(frac.join("img000.png")).unwrap();
    std::fs::write(frac.join("cut.png"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(frac.join("text.jpg"), "these are not pixels").unwrap();
    let out = dir.path().join("runs");
    let o = run(&train_args(&data, &out, &["--epochs", "1"]));
    let (code, err) = failure(&o);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("cut.png") && err.contains("text.jpg"), "{err}");
    assert!(
        err.contains("2 of the train images could not be read"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    // six files listed as fractured training images, two of them unusable
    assert!(stdout.contains("train 12 images (9 fractured"), "{stdout}");
    assert!(stdout.contains("epoch   1/1"), "{stdout}");
}

#[test]
fn option_and_model_faults_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 2);
    let out = dir.path().join("runs");
    let cases: &[(&[&str], &str)] = &[
        (&["--batch-size", "0"], "--batch-size must be at least 1"),
        (&["--lr", "0"], "--lr must be a positive number"),
        (&["--lr", "-0.1"], "--lr must be a positive number"),
        (&["--lr", "NaN"], "--lr must be a positive number"),
        (
            &["--clip-grad-norm", "0"],
            "--clip-grad-norm must be a positive number",
        ),
        (&["--image-size", "8"], "layer"),
    ];
    for (more, want) in cases {
        let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
        let mut args = vec!["train", "--data", d, "--out", o, "--backend", "cpu"];
        args.extend_from_slice(more);
        for (flag, default) in [("--image-size", "16"), ("--batch-size", "4")] {
            if !more.contains(&flag) {
                args.extend_from_slice(&[flag, default]);
            }
        }
        let (code, err) = failure(&run(&args));
        assert_eq!(code, Some(1), "{more:?}: {err}");
        assert!(err.contains(want), "{more:?}: {err}");
    }
    // a spec file with a syntax error, and one whose shapes do not fit together
    let spec = dir.path().join("broken.toml");
    let head = "name = \"x\"\ninput = [1, 16, 16]\nlayers = [ ";
    for (layers, want) in [
        ("{ type = ", vec!["broken.toml", "TOML"]),
        (
            "{ type = \"dense\", units = 1 } ]",
            vec!["layer 0 (dense 1)", "flatten"],
        ),
    ] {
        std::fs::write(&spec, format!("{head}{layers}")).unwrap();
        let args = ["model", "summary", "--model", spec.to_str().unwrap()];
        let (code, err) = failure(&run(&args));
        assert_eq!(code, Some(1));
        assert!(want.iter().all(|w| err.contains(w)), "{err}");
    }
    let (code, _) = failure(&run(&["train", "--batch-size", "-3"]));
    assert_eq!(code, Some(2), "a negative batch size is a usage error");
}

#[test]
fn an_output_folder_that_cannot_be_written_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 2);
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = file.join("runs");
    let (code, err) = failure(&run(&train_args(&data, &out, &[])));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot create the run folder") && err.contains("a-file"),
        "{err}"
    );
}

#[test]
fn bad_checkpoints_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 2);
    let out = dir.path().join("runs");
    let o = run(&train_args(&data, &out, &["--epochs", "1"]));
    assert!(o.status.success());
    let last = run_dir(&out).join("last.safetensors");
    let good = std::fs::read(&last).unwrap();
    let resume = || {
        failure(&run(&[
            "train",
            "--resume",
            run_dir(&out).to_str().unwrap(),
            "--epochs",
            "2",
            "--backend",
            "cpu",
        ]))
    };

    for (what, bytes) in [
        ("truncated", good[..good.len() / 3].to_vec()),
        ("not safetensors", b"PK\x03\x04 a zip file".to_vec()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&last, &bytes).unwrap();
        let (code, err) = resume();
        assert_eq!(code, Some(1), "{what}");
        assert!(
            err.contains("last.safetensors") && err.contains("not a fracture-cnn checkpoint"),
            "{what}: {err}"
        );
    }
    // a checkpoint of another architecture (the other preset), and of another input size
    for (model, size) in [("xray-bone-classifier", 94), ("fracturenet", 32)] {
        let spec = ModelSpec::load(model)
            .unwrap()
            .with_image_size(size)
            .unwrap();
        let other = Model::new(&Cpu::new(), &spec, 1).unwrap();
        let info = checkpoint::CheckpointInfo {
            spec,
            threshold: 0.5,
            epoch: 1,
            progress: None,
        };
        checkpoint::save(&Cpu::new(), &other, &info, Vec::new(), &last).unwrap();
        let (code, err) = resume();
        assert_eq!(code, Some(1));
        assert!(
            err.contains("last.safetensors") && err.contains("holds a model other than"),
            "{model} {size}: {err}"
        );
    }
    // loading a checkpoint of one model as another names the tensor that differs
    std::fs::write(&last, &good).unwrap();
    let (_, _, extra) = checkpoint::load_with_extra(&Cpu::new(), &last).unwrap();
    assert!(extra.keys().all(|k| k.starts_with("optimizer.")));
}

/// Runs `args` with the size of any file it writes limited to `bytes` (as when a disk fills).
fn run_with_file_size_limit(args: &[&str], bytes: u64) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    // SIGXFSZ ignored, so that an over-long write fails with EFBIG instead of killing the process
    let script = format!(
        "trap '' XFSZ; ulimit -f {}; exec '{BIN}' {}",
        bytes / 512,
        quoted.join(" ")
    );
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

#[test]
fn a_checkpoint_write_that_fails_leaves_the_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 2);
    let out = dir.path().join("runs");
    assert!(run(&train_args(&data, &out, &["--epochs", "1"]))
        .status
        .success());
    let run_dir = run_dir(&out);
    let last = run_dir.join("last.safetensors");
    let before = std::fs::read(&last).unwrap();
    let o = run_with_file_size_limit(
        &[
            "train",
            "--resume",
            run_dir.to_str().unwrap(),
            "--epochs",
            "2",
            "--backend",
            "cpu",
            "--quiet",
        ],
        256 * 1024,
    );
    let (code, err) = failure(&o);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot write") && err.contains(".safetensors"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        before,
        "last.safetensors changed"
    );
    checkpoint::read(&last).expect("still loadable");
    let leftovers: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_diverging_run_stops_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 3);
    let out = dir.path().join("runs");
    let (code, err) = failure(&run(&train_args(
        &data,
        &out,
        &["--lr", "1e30", "--epochs", "3"],
    )));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("step") && err.contains("lower --lr"), "{err}");
}

#[test]
fn a_non_finite_gradient_is_named_and_large_ones_are_clipped() {
    let spec = ModelSpec::load("fracturenet")
        .unwrap()
        .with_image_size(16)
        .unwrap();
    let mut model = Model::new(&Cpu::new(), &spec, 1).unwrap();
    for (i, p) in model.params_mut().into_iter().enumerate() {
        if p.trainable {
            let shape = Cpu::new().shape(&p.value).clone();
            p.grad = Some(fracture_cnn::tensor::Tensor::full(shape, 3.0 + i as f32));
        }
    }
    let norm = train::check_and_clip_gradients(&Cpu::new(), &mut model, Some(1.0)).unwrap();
    assert!(norm > 1.0);
    let after = train::check_and_clip_gradients(&Cpu::new(), &mut model, None).unwrap();
    assert!((after - 1.0).abs() < 1e-4, "clipped to {after}");

    let names: Vec<String> = model.named_params().into_iter().map(|p| p.name).collect();
    let at = names.iter().position(|n| n == "04.conv2d.weight").unwrap();
    model.params_mut()[at].grad.as_mut().unwrap().data[5] = f32::NAN;
    let e = train::check_and_clip_gradients(&Cpu::new(), &mut model, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weight of layer 4 (conv2d) became NaN"), "{e}");
}

/// Starts a training run of many short epochs.
fn start(data: &Path, out: &Path, more: &[&str]) -> Child {
    Command::new(BIN)
        .args(train_args(data, out, more))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to a child process we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Every column of metrics.csv but the timings.
fn figures(run_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(run_dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(13).collect::<Vec<_>>().join(","))
        .collect()
}

/// `train --resume RUN` on the CPU, quietly, with an optional fault hook.
fn resume(run_dir: &Path, more: &[&str], hook: Option<(&str, &str)>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["train", "--resume", run_dir.to_str().unwrap()])
        .args(["--backend", "cpu", "--quiet"])
        .args(more);
    if let Some((var, value)) = hook {
        cmd.env(var, value);
    }
    cmd.output().unwrap()
}

fn steps_saved(last: &Path) -> u64 {
    let (info, _) = checkpoint::read(last).expect("a loadable checkpoint");
    let progress = info.progress.expect("a run's progress");
    serde_json::from_str::<train::Progress>(&progress)
        .unwrap()
        .steps
}

/// 16 training images in batches of 4: 4 steps an epoch. A stop after step k, anywhere in an
/// epoch (its first step, its middle, its last), saves the run with k steps done, and the resumed
/// run ends with every figure of a run that was never stopped.
#[test]
fn a_stop_after_any_step_saves_the_run_and_resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 8);
    let epochs = ["--epochs", "3"];
    let whole = dir.path().join("whole");
    assert!(run(&train_args(&data, &whole, &epochs)).status.success());
    for k in [1u64, 6, 8, 11] {
        let out = dir.path().join(format!("stopped-at-{k}"));
        let o = Command::new(BIN)
            .args(train_args(&data, &out, &epochs))
            .env("FRACTURE_FAULT_STOP_AFTER_STEP", k.to_string())
            .output()
            .unwrap();
        let (code, err) = failure(&o);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(code, Some(130), "step {k}: {stdout}{err}");
        // a stop after an epoch's last step is seen at the next epoch's first
        let (epoch, batch) = (k / 4 + 1, k % 4);
        assert!(
            stdout.contains(&format!(
                "stopped during epoch {epoch} after {batch} of 4 batches"
            )),
            "step {k}: {stdout}"
        );
        assert_eq!(steps_saved(&run_dir(&out).join("last.safetensors")), k);
        let o = resume(&run_dir(&out), &[], None);
        assert!(o.status.success(), "{}", failure(&o).1);
        assert_eq!(
            figures(&run_dir(&out)),
            figures(&run_dir(&whole)),
            "step {k}"
        );
    }
}

/// A kill in the middle of a checkpoint's write, at any byte of it, leaves the previous
/// checkpoint as it was, byte for byte; the run resumes from it to the figures of a run that
/// was never killed.
#[test]
fn a_kill_at_any_byte_of_a_checkpoint_write_leaves_the_previous_one_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 8);
    let whole = dir.path().join("whole");
    assert!(run(&train_args(&data, &whole, &["--epochs", "2"]))
        .status
        .success());
    let out = dir.path().join("runs");
    assert!(run(&train_args(&data, &out, &["--epochs", "1"]))
        .status
        .success());
    let last = run_dir(&out).join("last.safetensors");
    let before = std::fs::read(&last).unwrap();
    for k in [0, 1, 4096, before.len() / 2, before.len() - 1] {
        let hook = format!("last.safetensors:{k}");
        let o = resume(
            &run_dir(&out),
            &["--epochs", "2"],
            Some(("FRACTURE_FAULT_CUT_WRITE", &hook)),
        );
        let (code, err) = failure(&o);
        assert_eq!(code, Some(faults::CUT_WRITE_EXIT), "byte {k}: {err}");
        assert!(err.contains(&format!("killed after {k} bytes")), "{err}");
        assert!(
            std::fs::read(&last).unwrap() == before,
            "byte {k}: last.safetensors changed"
        );
        assert_eq!(steps_saved(&last), 4);
    }
    let o = resume(&run_dir(&out), &["--epochs", "2"], None);
    assert!(o.status.success(), "{}", failure(&o).1);
    assert_eq!(figures(&run_dir(&out)), figures(&run_dir(&whole)));
}

/// Ctrl-C and SIGTERM (whenever they land in a long run) stop it cleanly, saved and resumable.
#[test]
fn ctrl_c_and_sigterm_stop_a_run_cleanly_and_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 8);
    for (i, sig) in [libc::SIGINT, libc::SIGTERM].into_iter().enumerate() {
        let out = dir.path().join(format!("stopped{i}"));
        let child = start(&data, &out, &["--epochs", "100000"]);
        wait_for(&run_dir(&out).join("last.safetensors"));
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let (code, err) = failure(&o);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(code, Some(130), "{stdout}{err}");
        assert!(
            stdout.contains("continue it with: fracture-cnn train --resume"),
            "{stdout}"
        );
        let last = run_dir(&out).join("last.safetensors");
        let done = steps_saved(&last) / 4;
        let o = resume(&run_dir(&out), &["--epochs", &(done + 1).to_string()], None);
        assert!(o.status.success(), "{}", failure(&o).1);
        assert_eq!(steps_saved(&last), 4 * (done + 1));
    }
}

/// `train` with the GPU made to fail at its `sync`-th wait for the device (as if it were lost).
fn train_with_gpu_fault(data: &Path, out: &Path, backend: &str, sync: usize) -> Output {
    let mut args = train_args(data, out, &["--epochs", "3"]);
    let at = args.iter().position(|a| *a == "cpu").unwrap();
    args[at] = backend;
    Command::new(BIN)
        .args(args)
        .env("FRACTURE_SOFTWARE_GPU", "1")
        .env("FRACTURE_GPU_FAULT_AT_SYNC", sync.to_string())
        .output()
        .unwrap()
}

#[test]
fn a_gpu_that_fails_mid_run_is_reported_and_auto_carries_on_on_the_cpu() {
    if common::gpu::backend().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 8);
    // in epoch 2: `auto` resumes on the CPU from epoch 1's checkpoint and finishes the run
    let out = dir.path().join("auto");
    let o = train_with_gpu_fault(&data, &out, "auto", 200);
    let (code, err) = failure(&o);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("the GPU device was lost") && err.contains("continuing on the CPU from"),
        "{err}"
    );
    assert_eq!(figures(&run_dir(&out)).len(), 1 + 3);
    // before any checkpoint: `auto` starts again on the CPU
    let out = dir.path().join("early");
    let (code, err) = failure(&train_with_gpu_fault(&data, &out, "auto", 3));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("starting again on the CPU"), "{err}");
    assert_eq!(figures(&out.join("fracturenet-002")).len(), 1 + 3);
    // `gpu` stops with the way to resume
    let out = dir.path().join("gpu");
    let (code, err) = failure(&train_with_gpu_fault(&data, &out, "gpu", 200));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the GPU device was lost")
            && err.contains("fracture-cnn train --resume")
            && err.contains("--backend cpu"),
        "{err}"
    );
}

#[test]
fn without_a_gpu_adapter_gpu_is_refused_and_auto_uses_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 2);
    let out = dir.path().join("runs");
    let with_backend = |backend| {
        let mut args = train_args(&data, &out, &["--epochs", "1"]);
        let at = args.iter().position(|a| *a == "cpu").unwrap();
        args[at] = backend;
        // a graphics API this machine does not have: wgpu finds no adapter
        let api = if cfg!(windows) { "metal" } else { "dx12" };
        Command::new(BIN)
            .args(args)
            .env("WGPU_BACKEND", api)
            .output()
            .unwrap()
    };
    let (code, err) = failure(&with_backend("gpu"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--backend gpu")
            && err.contains("no GPU adapter")
            && err.contains("--backend cpu"),
        "{err}"
    );
    let o = with_backend("auto");
    assert!(o.status.success(), "{}", failure(&o).1);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("no GPU adapter") && stdout.contains("using the CPU backend"),
        "{stdout}"
    );
}
