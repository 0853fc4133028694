//! Every preset in presets/ loads, validates, and says what the paper's recipe says.

use annt::accel::amp::AmpMode;
use annt::config::Preset;
use annt::train::optim::OptimizerConfig;
use annt::train::schedule::ScheduleConfig;
use std::path::Path;

fn preset(name: &str) -> Preset {
    Preset::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("presets")
            .join(format!("{name}.toml")),
    )
    .expect(name)
}

#[test]
fn every_preset_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("presets") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let p = Preset::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                Some(p.name.as_str()),
                path.file_stem().and_then(|s| s.to_str()),
                "name matches the file"
            );
            n += 1;
        }
    }
    assert!(n >= 13, "{n} presets");
}

#[test]
fn paper_recipes_are_faithful() {
    for ds in ["cifar10", "cifar100"] {
        let r = preset(&format!("resnet50-{ds}"));
        assert_eq!(
            (
                r.run.model.name.as_str(),
                r.run.train.batch_size,
                r.run.train.epochs
            ),
            ("resnet50-cifar", 128, 30)
        );
        assert!(
            matches!(r.run.train.optim.optimizer, OptimizerConfig::Adam { lr, weight_decay, .. } if lr == 1e-3 && weight_decay == 1e-3)
        );
        assert!(matches!(
            r.run.train.schedule,
            ScheduleConfig::OneCycle { .. }
        ));
        assert_eq!(
            (r.tuned.amp, r.tuned.grad_accum_steps, r.tuned.pinned_memory),
            (AmpMode::Fp16, 2, true)
        );

        let e = preset(&format!("efficientnet-b0-{ds}"));
        assert_eq!(
            (
                e.run.model.resolution,
                e.run.train.batch_size,
                e.run.train.epochs
            ),
            (Some(224), 96, 20)
        );
        assert!(
            matches!(e.run.train.optim.optimizer, OptimizerConfig::Sgd { momentum, nesterov: true, .. } if momentum == 0.9)
        );
        let rates: Vec<f64> = e
            .run
            .train
            .optim
            .groups
            .iter()
            .filter_map(|g| g.lr)
            .collect();
        assert_eq!(rates, [1e-3, 2e-3, 1e-2]);
        assert!(
            matches!(e.run.train.schedule, ScheduleConfig::Exponential { gamma } if gamma == 0.975)
        );
        assert!(
            e.run.model.weights.is_some(),
            "fine-tuned from ImageNet weights"
        );

        let v = preset(&format!("vit-b16-{ds}"));
        assert_eq!(
            (v.run.train.batch_size, v.run.train.epochs),
            (70, if ds == "cifar10" { 10 } else { 15 })
        );
        assert!(matches!(
            v.run.train.optim.optimizer,
            OptimizerConfig::AdamW { .. }
        ));
        assert_eq!((v.tuned.amp, v.tuned.grad_accum_steps), (AmpMode::Fp16, 2));

        for base in ["resnet50", "efficientnet-b0", "vit-b16"] {
            let full = preset(&format!("{base}-{ds}"));
            let twin = preset(&format!("{base}-{ds}-controlled"));
            assert_eq!(
                twin.run, full.run,
                "{base}: the twin trains the same recipe"
            );
            let changed = usize::from(twin.tuned.grad_accum_steps > 1)
                + usize::from(twin.tuned.amp != AmpMode::Off)
                + usize::from(twin.tuned.pinned_memory);
            assert_eq!(changed, 1, "{base}: the controlled twin changes one switch");
        }
    }
}

#[test]
fn a_bad_preset_names_the_file_and_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/quick-cpu.toml"),
    )
    .expect("read");
    text = text.replace("batch_size = 64", "batch_size = 0");
    std::fs::write(&path, &text).expect("write");
    let err = Preset::load(&path).expect_err("batch 0").to_string();
    assert!(
        err.contains("batch_size") && err.contains("bad.toml"),
        "{err}"
    );
    std::fs::write(
        &path,
        text.replace("batch_size = 0", "batch_size = 64\nbatchsize = 3"),
    )
    .expect("write");
    let err = Preset::load(&path).expect_err("unknown key").to_string();
    assert!(
        err.contains("batchsize") && err.contains("bad.toml"),
        "{err}"
    );
}

/// The presets that reproduce the paper carry its published figures (its repository's
/// README, results with tuning), and the report shows them beside the measured ones.
#[test]
fn paper_presets_carry_the_published_figures_and_reports_show_them() {
    let want = [
        (
            "efficientnet-b0-cifar10",
            Some(96.0),
            Some(96.0),
            Some(96.0),
            60.0,
        ),
        ("vit-b16-cifar10", Some(97.0), Some(97.0), Some(97.0), 120.0),
        ("resnet50-cifar10", Some(92.0), Some(92.0), Some(92.0), 46.0),
        (
            "efficientnet-b0-cifar100",
            Some(81.0),
            Some(90.0),
            None,
            66.0,
        ),
        ("resnet50-cifar100", None, Some(75.2), None, 18.0),
        ("vit-b16-cifar100", Some(84.0), None, None, 150.0),
    ];
    for (name, train, test, f1, minutes) in want {
        let p = preset(name)
            .paper
            .unwrap_or_else(|| panic!("{name}: no paper figures"));
        assert_eq!(
            (p.train_accuracy, p.test_accuracy, p.f1, p.execution_minutes),
            (train, test, f1, Some(minutes)),
            "{name}"
        );
        assert!(p.note.contains("does not name its GPU"), "{name}");
    }
    assert!(preset("resnet50-cifar10-controlled").paper.is_none());
    assert!(preset("quick-cpu").paper.is_none());

    use annt::bench::result::{RunResult, RunStatus, SessionResult};
    let run = |ga: usize, acc: f64, secs: f64| RunResult {
        arm: format!("ga{ga}"),
        status: RunStatus::Finished,
        switches: annt::config::Switches {
            grad_accum_steps: ga,
            ..Default::default()
        },
        final_test_accuracy: acc,
        wall_secs: secs,
        ..RunResult::default()
    };
    let mut s = SessionResult {
        paper: preset("resnet50-cifar10").paper,
        runs: vec![run(1, 0.90, 3000.0), run(2, 0.913, 2400.0)],
        ..SessionResult::default()
    };
    s.summarize();
    let md = annt::report::render(&s, annt::report::ReportFormat::Markdown).expect("md");
    assert!(md.contains("## The paper's figures beside these"), "{md}");
    assert!(
        md.contains("| test accuracy | 92.0 % | 90.0 % | 91.3 % |"),
        "{md}"
    );
    assert!(
        md.contains("| execution time | 46.0 min (GPU not named) | 50.0 min | 40.0 min |"),
        "{md}"
    );
}
