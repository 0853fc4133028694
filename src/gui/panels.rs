//! The left panel: data, model, accelerations, training, plan, device, presets, Start/Stop.

use annt::accel::amp::AmpMode;
use annt::models::VARIANTS;

use super::AnntApp;
use super::state::{DataChoice, OptimizerChoice};

pub fn settings_ui(app: &mut AnntApp, ui: &mut egui::Ui) {
    let running = app.is_running();
    ui.heading("annt");
    ui.label("Baseline vs tuned: what each acceleration really buys on this machine.");
    ui.add_space(4.0);
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!running, egui::Button::new("Start"))
            .clicked()
        {
            app.start(ui.ctx());
        }
        if ui.add_enabled(running, egui::Button::new("Stop")).clicked() {
            app.stop();
        }
        ui.menu_button("Presets", |ui| {
            let dir = std::path::Path::new("presets");
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "toml"))
            {
                let name = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if ui.button(&name).clicked() {
                    match annt::config::Preset::load(f) {
                        Ok(p) => app.settings.apply_preset(&p),
                        Err(e) => app.messages.push((true, e.to_string())),
                    }
                    ui.close();
                }
            }
            if files.is_empty() {
                ui.label("no presets/ folder here");
            }
        });
    });
    ui.separator();

    egui::CollapsingHeader::new("Data")
        .default_open(true)
        .show(ui, |ui| {
            ui.add_enabled_ui(!running, |ui| {
                let s = &mut app.settings;
                ui.radio_value(
                    &mut s.data,
                    DataChoice::Builtin,
                    "Built-in shapes (no download)",
                );
                ui.radio_value(&mut s.data, DataChoice::Cifar10, "CIFAR-10");
                ui.horizontal(|ui| {
                    ui.radio_value(&mut s.data, DataChoice::Cifar100, "CIFAR-100");
                    ui.checkbox(&mut s.coarse_labels, "coarse labels");
                });
                if let DataChoice::Path(p) = &s.data {
                    ui.label(format!("Folder: {p}"));
                }
                ui.horizontal(|ui| {
                    let l = ui.label("Train on first");
                    ui.add(egui::DragValue::new(&mut s.train_limit).range(0..=1_000_000))
                        .labelled_by(l.id);
                    ui.label("images (0 = all)");
                });
            });
            ui.label(
                egui::RichText::new(
                    "Drop a data folder or archive anywhere on the window to use it.",
                )
                .weak(),
            );
            match &app.data_summary {
                Some(Ok(s)) => {
                    ui.label(egui::RichText::new(s).color(egui::Color32::DARK_GREEN));
                }
                Some(Err(e)) => {
                    ui.label(
                        egui::RichText::new(format!("Rejected: {e}")).color(egui::Color32::RED),
                    );
                }
                None if app.data_check.is_some() => {
                    ui.label("checking…");
                }
                None => {}
            }
            ui.label(
                egui::RichText::new("CIFAR: `annt data download cifar10|cifar100` first.").weak(),
            );
        });

    egui::CollapsingHeader::new("Model")
        .default_open(true)
        .show(ui, |ui| {
            ui.add_enabled_ui(!running, |ui| {
                egui::ComboBox::from_label("Model")
                    .selected_text(app.settings.model.clone())
                    .show_ui(ui, |ui| {
                        for v in VARIANTS {
                            let label = format!(
                                "{} ({} px{})",
                                v.name,
                                v.resolution,
                                if v.cpu_friendly { ", CPU-friendly" } else { "" }
                            );
                            ui.selectable_value(&mut app.settings.model, v.name.to_string(), label);
                        }
                    });
            });
        });

    egui::CollapsingHeader::new("Accelerations (tuned arm)").default_open(true).show(ui, |ui| {
        ui.add_enabled_ui(!running, |ui| {
            let s = &mut app.settings;
            ui.horizontal(|ui| {
                let l = ui.label("Gradient accumulation");
                ui.add(egui::DragValue::new(&mut s.accum).range(1..=64).prefix("k = ")).labelled_by(l.id);
            });
            ui.label(egui::RichText::new("k micro-batches per optimiser step: a larger effective batch in the same memory.").weak());
            ui.horizontal(|ui| {
                ui.label("Mixed precision");
                ui.radio_value(&mut s.amp, AmpMode::Off, "off");
                ui.radio_value(&mut s.amp, AmpMode::Bf16, "bf16");
                ui.radio_value(&mut s.amp, AmpMode::Fp16, "fp16");
            });
            ui.label(egui::RichText::new("Half-precision math with f32 master weights (fp16 with loss scaling). On a CPU: numerics only, no speed-up.").weak());
            // Pinned memory needs a host-to-device copy: there is none on the CPU.
            ui.add_enabled(false, egui::Checkbox::new(&mut s.pin, "Pinned memory"))
                .on_disabled_hover_text("Not applicable on the CPU: there is no host-to-device copy to speed up.");
            ui.label(egui::RichText::new("Pinned memory: not applicable on the CPU (no host-to-device copy).").weak());
        });
    });

    egui::CollapsingHeader::new("Training")
        .default_open(true)
        .show(ui, |ui| {
            ui.add_enabled_ui(!running, |ui| {
                let s = &mut app.settings;
                egui::Grid::new("training").num_columns(2).show(ui, |ui| {
                    let l = ui.label("Epochs");
                    ui.add(egui::DragValue::new(&mut s.epochs).range(1..=1000))
                        .labelled_by(l.id);
                    ui.end_row();
                    let l = ui.label("Batch (micro)");
                    ui.add(egui::DragValue::new(&mut s.batch).range(1..=4096))
                        .labelled_by(l.id);
                    ui.end_row();
                    let l = ui.label("Optimiser");
                    egui::ComboBox::from_id_salt("optim")
                        .selected_text(format!("{:?}", s.optimizer))
                        .show_ui(ui, |ui| {
                            ui.selectable_value(
                                &mut s.optimizer,
                                OptimizerChoice::SgdNesterov,
                                "SgdNesterov",
                            );
                            ui.selectable_value(&mut s.optimizer, OptimizerChoice::Adam, "Adam");
                            ui.selectable_value(&mut s.optimizer, OptimizerChoice::AdamW, "AdamW");
                        })
                        .response
                        .labelled_by(l.id);
                    ui.end_row();
                    let l = ui.label("Learning rate");
                    ui.add(
                        egui::DragValue::new(&mut s.lr)
                            .speed(0.001)
                            .range(0.0..=10.0),
                    )
                    .labelled_by(l.id);
                    ui.end_row();
                    ui.label("");
                    ui.checkbox(&mut s.one_cycle, "One-cycle schedule");
                    ui.end_row();
                    let l = ui.label("Seed");
                    ui.add(egui::DragValue::new(&mut s.seed)).labelled_by(l.id);
                    ui.end_row();
                });
            });
        });

    egui::CollapsingHeader::new("Plan")
        .default_open(true)
        .show(ui, |ui| {
            ui.add_enabled_ui(!running, |ui| {
                let s = &mut app.settings;
                ui.radio_value(&mut s.ablation, false, "A/B: baseline vs tuned");
                ui.radio_value(&mut s.ablation, true, "Ablation: all 8 combinations");
                ui.horizontal(|ui| {
                    let l = ui.label("Repeats");
                    ui.add(egui::DragValue::new(&mut s.repeats).range(1..=20))
                        .labelled_by(l.id);
                });
            });
        });

    egui::CollapsingHeader::new("Device")
        .default_open(false)
        .show(ui, |ui| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            ui.label(format!("CPU ({cores} cores)"));
            ui.label(
                egui::RichText::new(
                    "This build has no CUDA; GPU devices appear in the CUDA build.",
                )
                .weak(),
            );
        });

    ui.separator();
    for (is_error, text) in &app.messages {
        let colour = if *is_error {
            egui::Color32::RED
        } else {
            ui.visuals().text_color()
        };
        ui.label(egui::RichText::new(text).color(colour));
    }
    if let Some(avg) = frame_p99(app) {
        ui.label(
            egui::RichText::new(format!(
                "UI time per frame, p99 of the last {}: {avg:.2} ms",
                app.frame_ms.len()
            ))
            .weak(),
        );
    }
}

/// The 99th percentile of the UI's own time per recent frame.
pub fn frame_p99(app: &AnntApp) -> Option<f32> {
    if app.frame_ms.len() < 10 {
        return None;
    }
    let mut v: Vec<f32> = app.frame_ms.iter().copied().collect();
    v.sort_by(f32::total_cmp);
    v.get((v.len() * 99) / 100).copied()
}
