//! The centre (live curves and per-arm progress) and the bottom (comparison table, report).

use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::AnntApp;

/// A run's curve: name, colour, (epoch, value) points.
type Curve = (String, egui::Color32, Vec<[f64; 2]>);

const COLOURS: [egui::Color32; 8] = [
    egui::Color32::from_rgb(31, 119, 180),
    egui::Color32::from_rgb(214, 39, 40),
    egui::Color32::from_rgb(44, 160, 44),
    egui::Color32::from_rgb(255, 127, 14),
    egui::Color32::from_rgb(148, 103, 189),
    egui::Color32::from_rgb(140, 86, 75),
    egui::Color32::from_rgb(227, 119, 194),
    egui::Color32::from_rgb(23, 190, 207),
];

pub fn curves_ui(app: &mut AnntApp, ui: &mut egui::Ui) {
    for (i, r) in app.runs.iter().enumerate() {
        let frac = if r.total_steps > 0 {
            r.step as f32 / r.total_steps as f32
        } else {
            0.0
        };
        let eta = match (r.started, frac) {
            (Some(t), f) if f > 0.02 && !r.finished => {
                format!(", ETA {:.0} s", t.elapsed().as_secs_f32() * (1.0 - f) / f)
            }
            _ => String::new(),
        };
        ui.horizontal(|ui| {
            ui.colored_label(
                COLOURS[i % COLOURS.len()],
                format!("{} #{}", r.arm, r.repeat + 1),
            );
            ui.add(
                egui::ProgressBar::new(frac)
                    .desired_width(300.0)
                    .text(format!(
                        "{}/{} steps, {}{eta}",
                        r.step, r.total_steps, r.status
                    )),
            );
        });
    }
    if app.runs.is_empty() {
        ui.label("Press Start: the baseline and the tuned arm train one after the other, and their curves appear here.");
    }
    let height = ((ui.available_height() - 20.0) / 2.0).max(120.0);
    let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
    let series = |f: &dyn Fn(&annt::bench::result::EpochRecord) -> f64| -> Vec<Curve> {
        app.runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("{} #{}", r.arm, r.repeat + 1),
                    COLOURS[i % COLOURS.len()],
                    r.epochs.iter().map(|e| [e.epoch as f64, f(e)]).collect(),
                )
            })
            .collect()
    };
    let charts: [(&str, Vec<Curve>); 4] = [
        ("Training loss", series(&|e| e.train_loss)),
        ("Test accuracy (%)", series(&|e| 100.0 * e.test_accuracy)),
        ("Train accuracy (%)", series(&|e| 100.0 * e.train_accuracy)),
        ("Images/s", series(&|e| e.images_per_sec)),
    ];
    egui::Grid::new("charts").num_columns(2).show(ui, |ui| {
        for (i, (title, lines)) in charts.into_iter().enumerate() {
            ui.vertical(|ui| {
                ui.label(title);
                Plot::new(title)
                    .legend(Legend::default())
                    .height(height - 20.0)
                    .width(width)
                    .x_axis_label("epoch")
                    .show(ui, |p| {
                        for (name, colour, points) in lines {
                            p.line(Line::new(name, PlotPoints::from(points)).color(colour));
                        }
                    });
            });
            if i % 2 == 1 {
                ui.end_row();
            }
        }
    });
}

pub fn table_ui(app: &mut AnntApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("Comparison");
        let has = app.session.is_some();
        if ui
            .add_enabled(has, egui::Button::new("Save report…"))
            .clicked()
        {
            app.open_save_dialog();
        }
        let l = ui.label("or to path:");
        ui.text_edit_singleline(&mut app.report_path)
            .labelled_by(l.id);
        if ui
            .add_enabled(has, egui::Button::new("Save to path"))
            .clicked()
        {
            app.save_report_to_path();
        }
        if ui.button("Open report…").clicked() {
            let path = std::path::PathBuf::from(app.report_path.trim());
            match annt::report::read_json(&path) {
                Ok(s) => app.session = Some(s),
                Err(e) => app
                    .messages
                    .push((true, format!("{e} (give the path of a .json report)"))),
            }
        }
    });
    let Some(session) = &app.session else {
        ui.label("The table fills when the session ends; each finished arm shows its curves above meanwhile.");
        return;
    };
    egui::ScrollArea::both().show(ui, |ui| {
        egui::Grid::new("comparison")
            .striped(true)
            .num_columns(9)
            .show(ui, |ui| {
                for h in [
                    "arm",
                    "test accuracy",
                    "macro-F1",
                    "wall time (s)",
                    "train time (s)",
                    "images/s",
                    "peak memory (MiB)",
                    "ms/step (fwd / bwd / opt)",
                    "speed-up",
                ] {
                    ui.strong(h);
                }
                ui.end_row();
                for a in &session.summary {
                    let phase = |p: annt::train::timing::Phase| {
                        a.phase_ms_per_step
                            .iter()
                            .find(|x| x.0 == p)
                            .map_or(0.0, |x| x.1)
                    };
                    use annt::train::timing::Phase;
                    ui.label(format!(
                        "{}{}",
                        a.arm,
                        if a.partial { " (partial)" } else { "" }
                    ));
                    ui.label(format!("{:.1} %", 100.0 * a.test_accuracy.mean));
                    ui.label(format!("{:.3}", a.macro_f1.mean));
                    ui.label(format!("{:.1}", a.wall_secs.mean));
                    ui.label(format!("{:.1}", a.train_secs.mean));
                    ui.label(format!("{:.1}", a.images_per_sec.mean));
                    ui.label(
                        a.peak_host_bytes
                            .map_or("–".into(), |b| format!("{:.0}", b as f64 / 1048576.0)),
                    );
                    ui.label(format!(
                        "{:.0} / {:.0} / {:.0}",
                        phase(Phase::Forward),
                        phase(Phase::Backward),
                        phase(Phase::Optimizer)
                    ));
                    ui.label(format!("{:.2}×", a.speedup_vs_baseline));
                    ui.end_row();
                }
            });
        for n in &session.notes {
            ui.label(egui::RichText::new(n).weak());
        }
    });
}
