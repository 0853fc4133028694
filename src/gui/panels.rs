//! The left panel: data, model, accelerations, training, plan, device, presets, Start/Stop.

use annt::accel::amp::AmpMode;
use annt::models::VARIANTS;

use super::AnntApp;
use super::action::UiAction;
use super::jobs::Dialog;
use super::state::{OptimizerChoice, ScheduleChoice};
use annt::config::DataSource;
use annt::config::DeviceChoice;
use annt::data::download::CifarVariant;

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
            app.act(UiAction::Start);
        }
        if ui.add_enabled(running, egui::Button::new("Stop")).clicked() {
            app.act(UiAction::Stop);
        }
        ui.menu_button("Presets", |ui| presets_menu(app, ui));
    });
    if let Some(message) = app.stopping_message() {
        ui.colored_label(egui::Color32::from_rgb(200, 120, 0), message);
    }
    if let Some(batch) = app.oom_batch {
        oom_offer(app, ui, batch);
    }
    if app.cpu_offer && !running {
        ui.horizontal(|ui| {
            ui.colored_label(egui::Color32::RED, "The GPU could not be used.");
            if ui.button("Run on the CPU instead").clicked() {
                app.act(UiAction::StartOnCpu);
            }
        });
    }
    ui.separator();

    egui::CollapsingHeader::new("Data")
        .default_open(true)
        .show(ui, |ui| {
            ui.add_enabled_ui(!running, |ui| {
                let s = &mut app.settings;
                let mut coarse = s.coarse_labels();
                let data = &mut s.run_mut().data;
                ui.radio_value(
                    &mut data.source,
                    DataSource::Builtin,
                    "Built-in shapes (no download)",
                );
                ui.radio_value(&mut data.source, DataSource::Cifar10, "CIFAR-10");
                ui.horizontal(|ui| {
                    ui.radio_value(&mut data.source, DataSource::Cifar100, "CIFAR-100");
                    ui.checkbox(&mut coarse, "coarse labels");
                });
                if let DataSource::Path(p) = &data.source {
                    ui.label(format!("Folder: {}", p.display()));
                }
                ui.horizontal(|ui| {
                    let l = ui.label("Train on first");
                    let mut limit = data.train_limit.unwrap_or(0);
                    ui.add(egui::DragValue::new(&mut limit).range(0..=1_000_000))
                        .labelled_by(l.id);
                    data.train_limit = (limit > 0).then_some(limit);
                    ui.label("images (0 = all)");
                });
                if coarse != s.coarse_labels() {
                    s.set_coarse_labels(coarse);
                }
            });
            ui.label(
                egui::RichText::new(
                    "Drop a data folder or archive anywhere on the window to use it.",
                )
                .weak(),
            );
            ui.horizontal(|ui| {
                if ui
                    .add_enabled(!running, egui::Button::new("Folder…"))
                    .on_hover_text("Choose a data folder (ImageFolder layout or a CIFAR folder)")
                    .clicked()
                {
                    app.act(UiAction::OpenDialog(Dialog::OpenData));
                }
                download_ui(app, ui);
            });
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
            samples_ui(app, ui);
        });

    egui::CollapsingHeader::new("Model")
        .default_open(true)
        .show(ui, |ui| model_ui(app, ui, running));

    egui::CollapsingHeader::new("Accelerations (tuned arm)").default_open(true).show(ui, |ui| {
        ui.add_enabled_ui(!running, |ui| {
            let device = app.settings.run().device;
            let s = app.settings.tuned_mut();
            ui.horizontal(|ui| {
                let l = ui.label("Gradient accumulation");
                ui.add(egui::DragValue::new(&mut s.grad_accum_steps).range(1..=64).prefix("k = ")).labelled_by(l.id);
            });
            ui.label(egui::RichText::new("k micro-batches per optimiser step: a larger effective batch in the same memory.").weak());
            ui.horizontal(|ui| {
                ui.label("Mixed precision");
                ui.radio_value(&mut s.amp, AmpMode::Off, "off");
                for (mode, name) in [(AmpMode::Bf16, "bf16"), (AmpMode::Fp16, "fp16")] {
                    // Greyed out, with the reason, where the chosen GPU lacks the format.
                    let gap = match (device, &app.gpus) {
                        (DeviceChoice::Cuda(i), Ok(gpus)) => gpus
                            .iter()
                            .find(|d| d.ordinal == i)
                            .and_then(|d| mode.unsupported_at(d.compute_capability)),
                        _ => None,
                    };
                    let r = ui.add_enabled(gap.is_none(), egui::RadioButton::new(s.amp == mode, name));
                    if r.clicked() {
                        s.amp = mode;
                    }
                    if let Some(why) = gap {
                        r.on_disabled_hover_text(why);
                    }
                }
            });
            // The same rule the trainer applies (`engine::trainer::compute_path`).
            let cpu = match annt::models::layers::kernels::bf16::Dot::detect() {
                Some(dot) => format!(
                    "On this CPU bf16 runs its matrix products on {}; fp16 is numerics only, no speed-up.",
                    dot.unit().label()
                ),
                None => "On this CPU: numerics only, no speed-up.".to_string(),
            };
            ui.label(
                egui::RichText::new(format!(
                    "Half-precision math with f32 master weights (fp16 with loss scaling). {cpu}"
                ))
                .weak(),
            );
            // Pinned memory needs a host-to-device copy: there is none on the CPU.
            ui.add_enabled(false, egui::Checkbox::new(&mut s.pinned_memory, "Pinned memory"))
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
                    let train = &mut s.run_mut().train;
                    let l = ui.label("Epochs");
                    ui.add(egui::DragValue::new(&mut train.epochs).range(1..=1000))
                        .labelled_by(l.id);
                    ui.end_row();
                    let l = ui.label("Batch (micro)");
                    ui.add(egui::DragValue::new(&mut train.batch_size).range(1..=4096))
                        .labelled_by(l.id);
                    ui.end_row();
                    let l = ui.label("Optimiser");
                    let mut optimizer = s.optimizer();
                    egui::ComboBox::from_id_salt("optim")
                        .selected_text(optimizer.label())
                        .show_ui(ui, |ui| {
                            for choice in [
                                OptimizerChoice::SgdNesterov,
                                OptimizerChoice::Adam,
                                OptimizerChoice::AdamW,
                            ] {
                                ui.selectable_value(&mut optimizer, choice, choice.label());
                            }
                        })
                        .response
                        .labelled_by(l.id);
                    s.set_optimizer(optimizer);
                    ui.end_row();
                    let l = ui.label("Learning rate");
                    let mut lr = s.lr();
                    ui.add(egui::DragValue::new(&mut lr).speed(0.001).range(0.0..=10.0))
                        .labelled_by(l.id);
                    if lr != s.lr() {
                        s.set_lr(lr);
                    }
                    ui.end_row();
                    let l = ui.label("Schedule");
                    let mut schedule = s.schedule();
                    egui::ComboBox::from_id_salt("schedule")
                        .selected_text(schedule.label())
                        .show_ui(ui, |ui| {
                            for c in ScheduleChoice::ALL {
                                ui.selectable_value(&mut schedule, c, c.label());
                            }
                        })
                        .response
                        .labelled_by(l.id);
                    s.set_schedule(schedule);
                    ui.end_row();
                    schedule_parameters_ui(&mut s.run_mut().train.schedule, ui);
                    let train = &mut s.run_mut().train;
                    let mut on = train.target_accuracy.is_some();
                    ui.checkbox(&mut on, "Stop at test accuracy");
                    let mut pct = 100.0 * train.target_accuracy.unwrap_or(0.9);
                    ui.add_enabled(
                        on,
                        egui::DragValue::new(&mut pct)
                            .range(1.0..=100.0)
                            .suffix(" %"),
                    );
                    train.target_accuracy = on.then_some(pct / 100.0);
                    ui.end_row();
                    let l = ui.label("Seed");
                    ui.add(egui::DragValue::new(&mut train.seed))
                        .labelled_by(l.id);
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
                // On the CPU pinned memory does not apply, so the ablation is GA × AMP.
                let ablation = if s.run().device == annt::config::DeviceChoice::Cpu {
                    "Ablation: all 4 combinations of GA × AMP (PM does not apply on the CPU)"
                } else {
                    "Ablation: all 8 combinations"
                };
                ui.radio_value(&mut s.ablation, true, ablation);
                ui.horizontal(|ui| {
                    let l = ui.label("Repeats");
                    ui.add(egui::DragValue::new(&mut s.repeats).range(1..=20))
                        .labelled_by(l.id);
                });
                ui.checkbox(&mut s.keep_weights, "Keep each run's trained weights")
                    .on_hover_text(
                        "Saved as safetensors (torchvision names) under annt's data folder; \
                         select a row of the table to save that arm's weights elsewhere.",
                    );
            });
        });

    egui::CollapsingHeader::new("Device")
        .default_open(true)
        .show(ui, |ui| device_ui(app, ui, running));

    ui.separator();
    for super::Message { kind, text } in &app.messages {
        let colour = if *kind == super::MessageKind::Error {
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

/// The chosen schedule's own parameters, as a preset file names them (one grid row each).
fn schedule_parameters_ui(schedule: &mut annt::train::schedule::ScheduleConfig, ui: &mut egui::Ui) {
    use annt::train::schedule::ScheduleConfig;
    match schedule {
        ScheduleConfig::Constant | ScheduleConfig::OneCycle { .. } => {}
        ScheduleConfig::CosineWarmup { warmup_steps, .. } => {
            let l = ui.label("  warm-up steps");
            ui.add(egui::DragValue::new(warmup_steps).range(0..=1_000_000))
                .labelled_by(l.id);
            ui.end_row();
        }
        ScheduleConfig::Exponential { gamma } => {
            let l = ui.label("  γ per epoch");
            ui.add(egui::DragValue::new(gamma).speed(0.001).range(0.0..=1.0))
                .labelled_by(l.id);
            ui.end_row();
        }
        ScheduleConfig::Step { step_epochs, gamma } => {
            let l = ui.label("  every (epochs)");
            ui.add(egui::DragValue::new(step_epochs).range(1..=1000))
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("  γ");
            ui.add(egui::DragValue::new(gamma).speed(0.001).range(0.0..=1.0))
                .labelled_by(l.id);
            ui.end_row();
        }
    }
}

/// The 99th percentile of the UI's own time per recent frame.
pub fn frame_p99(app: &AnntApp) -> Option<f32> {
    let recent: Vec<f32> = app.frame_ms.iter().copied().collect();
    super::app::percentiles(&recent).map(|(_, p99)| p99)
}

fn presets_menu(app: &mut AnntApp, ui: &mut egui::Ui) {
    // A name found in several folders comes from the first (the checkout before the
    // installed copy).
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in preset_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut here: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|f| f.extension().is_some_and(|e| e == "toml"))
            .filter(|f| !files.iter().any(|g| g.file_name() == f.file_name()))
            .collect();
        here.sort();
        files.extend(here);
    }
    for f in &files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if ui
            .button(&name)
            .on_hover_text(f.display().to_string())
            .clicked()
        {
            app.act(UiAction::LoadPreset(f.clone()));
            ui.close();
        }
    }
    if files.is_empty() {
        ui.label("no presets/ folder found");
    }
    ui.separator();
    if ui.button("Open preset file…").clicked() {
        app.act(UiAction::OpenDialog(Dialog::OpenPreset));
        ui.close();
    }
    if ui.button("Save settings as preset…").clicked() {
        app.act(UiAction::OpenDialog(Dialog::SavePreset));
        ui.close();
    }
    ui.horizontal(|ui| {
        let l = ui.label("Preset path:");
        ui.text_edit_singleline(&mut app.preset_path)
            .labelled_by(l.id);
    });
    ui.horizontal(|ui| {
        if ui.button("Load from path").clicked() {
            let path = std::path::PathBuf::from(app.preset_path.trim());
            app.act(UiAction::LoadPreset(path));
            ui.close();
        }
        if ui.button("Save to path").clicked() {
            app.act(UiAction::SavePreset);
            ui.close();
        }
    });
}

/// Where presets are listed from: `presets/` in the working directory (a source checkout)
/// and the installed copies (see `install_paths`), then the user's own folder.
fn preset_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs = crate::install_paths::presets_dirs();
    if let Some(d) = dirs::data_dir() {
        dirs.push(d.join("annt").join("presets"));
    }
    dirs
}

fn oom_offer(app: &mut AnntApp, ui: &mut egui::Ui, batch: usize) {
    let split = annt::config::split_micro_batch(batch);
    let (half, factor) = split.unwrap_or((batch, 1));
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.colored_label(
            egui::Color32::RED,
            format!("Out of device memory at micro-batch {batch}."),
        );
        ui.label(match split {
            Some(_) => format!(
                "Retry with micro-batches of {half} and {factor}× the gradient accumulation in every arm: each arm keeps its effective batch exactly."
            ),
            None => "A micro-batch of 1 cannot be split: choose a smaller model, resolution or precision.".into(),
        });
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    split.is_some(),
                    egui::Button::new(format!("Retry with micro-batch {half}")),
                )
                .clicked()
            {
                app.act(UiAction::RetrySmallerMicroBatch);
            }
            if ui.button("Dismiss").clicked() {
                app.oom_batch = None;
            }
        });
    });
}

fn download_ui(app: &mut AnntApp, ui: &mut egui::Ui) {
    if let Some(d) = &app.download {
        let done = d.done.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
        ui.add(
            egui::ProgressBar::new(d.fraction().unwrap_or(0.0))
                .desired_width(150.0)
                .text(format!("{} {done:.0} MB", d.what)),
        );
        if ui.button("Cancel").clicked() {
            d.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        return;
    }
    ui.menu_button("Download…", |ui| {
        for (label, v) in [
            ("CIFAR-10", CifarVariant::Cifar10),
            ("CIFAR-100", CifarVariant::Cifar100),
        ] {
            if ui.button(label).clicked() {
                app.act(UiAction::Download(v));
                ui.close();
            }
        }
    });
}

fn samples_ui(app: &mut AnntApp, ui: &mut egui::Ui) {
    let more = app.preview.as_ref().map_or(0, |p| {
        p.summary.classes.len().saturating_sub(p.samples.len())
    });
    let textures = app.sample_textures(ui.ctx()).to_vec();
    if textures.is_empty() {
        return;
    }
    egui::Grid::new("samples")
        .spacing([4.0, 2.0])
        .show(ui, |ui| {
            for (i, (class, tex)) in textures.iter().enumerate() {
                ui.vertical(|ui| {
                    ui.set_width(56.0);
                    ui.add(egui::Image::new((tex.id(), egui::vec2(52.0, 52.0))))
                        .on_hover_text(class);
                    ui.add(egui::Label::new(egui::RichText::new(class).small()).truncate());
                });
                if i % 5 == 4 {
                    ui.end_row();
                }
            }
        });
    if more > 0 {
        ui.label(egui::RichText::new(format!("… and {more} more classes")).weak());
    }
}

fn model_ui(app: &mut AnntApp, ui: &mut egui::Ui, running: bool) {
    let count = |app: &AnntApp, name: &str| {
        app.param_counts.get(name).map_or_else(String::new, |n| {
            format!(", {:.2} M params", *n as f64 / 1e6)
        })
    };
    ui.add_enabled_ui(!running, |ui| {
        let current = app.settings.run().model.name.clone();
        let selected = format!("{current}{}", count(app, &current));
        let mut model = current.clone();
        egui::ComboBox::from_label("Variant")
            .selected_text(selected)
            .width(230.0)
            .show_ui(ui, |ui| {
                for v in VARIANTS {
                    let label = format!(
                        "{} ({} px{}{})",
                        v.name,
                        v.resolution,
                        count(app, v.name),
                        if v.cpu_friendly { ", CPU-friendly" } else { "" }
                    );
                    ui.selectable_value(&mut model, v.name.to_string(), label);
                }
            });
        if model != current {
            app.settings.run_mut().model.name = model;
            app.act(UiAction::CheckWeights);
        }
        ui.horizontal(|ui| {
            let l = ui.label("Resolution");
            let resolution = &mut app.settings.run_mut().model.resolution;
            let mut px = resolution.unwrap_or(0);
            ui.add(egui::DragValue::new(&mut px).range(0..=1024).suffix(" px"))
                .labelled_by(l.id)
                .on_hover_text("0 = the model's own; images are resized to it");
            *resolution = (px > 0).then_some(px);
            ui.label(egui::RichText::new("(0 = the model's)").weak());
        });
        ui.horizontal(|ui| {
            if ui
                .button("Weights file…")
                .on_hover_text(
                    "Pretrained weights (safetensors with torchvision, timm or Hugging Face names)",
                )
                .clicked()
            {
                app.act(UiAction::OpenDialog(Dialog::OpenWeights));
            }
            let weights = &mut app.settings.run_mut().model.weights;
            let mut path = weights
                .as_ref()
                .map(|w| w.display().to_string())
                .unwrap_or_default();
            let l = ui.label("path:");
            let edit = ui
                .add(egui::TextEdit::singleline(&mut path).desired_width(130.0))
                .labelled_by(l.id);
            let path = path.trim();
            *weights = (!path.is_empty()).then(|| path.into());
            if edit.lost_focus() {
                app.act(UiAction::CheckWeights);
            }
            if app.settings.run().model.weights.is_some()
                && ui
                    .button("clear")
                    .on_hover_text("No pretrained weights")
                    .clicked()
            {
                app.settings.run_mut().model.weights = None;
                app.weights_check = None;
            }
        });
    });
    match &app.weights_check {
        Some(Ok(s)) => {
            ui.label(egui::RichText::new(s).color(egui::Color32::DARK_GREEN));
        }
        Some(Err(e)) => {
            ui.label(
                egui::RichText::new(format!("Weights rejected: {e}")).color(egui::Color32::RED),
            );
        }
        None => {}
    }
}

fn device_ui(app: &mut AnntApp, ui: &mut egui::Ui, running: bool) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ui.add_enabled_ui(!running, |ui| {
        ui.radio_value(
            &mut app.settings.run_mut().device,
            DeviceChoice::Cpu,
            format!("CPU ({cores} cores)"),
        );
        match &app.gpus {
            Ok(devices) => {
                for d in devices {
                    ui.radio_value(
                        &mut app.settings.run_mut().device,
                        DeviceChoice::Cuda(d.ordinal),
                        format!(
                            "cuda:{} {} ({:.0} GiB)",
                            d.ordinal,
                            d.info.name,
                            d.info.memory_bytes as f64 / (1u64 << 30) as f64
                        ),
                    );
                }
            }
            Err(reason) => {
                ui.label(egui::RichText::new(format!("No GPU: {reason}.")).weak());
            }
        }
    });
}
