//! The centre (live curves and per-arm progress) and the bottom (comparison table, report).

use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoints};

use annt::bench::result::{ArmSummary, SessionResult, definitions};
use annt::report::fmt::{arm_name, mib_stat, num, pct, speedup};
use annt::train::timing::Phase;

use super::AnntApp;
use super::action::UiAction;
use super::jobs::Dialog;

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

/// What the curves are drawn against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XAxis {
    #[default]
    Step,
    Epoch,
    Wall,
}

impl XAxis {
    fn label(self) -> &'static str {
        match self {
            XAxis::Step => "optimiser step",
            XAxis::Epoch => "epoch",
            XAxis::Wall => "wall time (s)",
        }
    }
}

/// A stable colour per arm: by the arm's first appearance, so repeats share it.
fn arm_colour(runs: &[super::RunView], arm: &str) -> egui::Color32 {
    let mut seen: Vec<&str> = Vec::new();
    for r in runs {
        if !seen.contains(&r.arm.as_str()) {
            seen.push(&r.arm);
        }
    }
    let i = seen.iter().position(|a| *a == arm).unwrap_or(0);
    COLOURS[i % COLOURS.len()]
}

/// TensorBoard's smoothing: an exponential moving average with weight `w`, debiased (the
/// first points are not pulled towards 0); NaNs are skipped.
pub fn smooth(values: &[[f64; 2]], w: f64) -> Vec<[f64; 2]> {
    let mut last = 0.0;
    let mut n = 0;
    let mut out = Vec::with_capacity(values.len());
    for &[x, y] in values {
        if !y.is_finite() {
            continue;
        }
        last = last * w + (1.0 - w) * y;
        n += 1;
        let debias = 1.0 - w.powi(n);
        out.push([x, if debias > 0.0 { last / debias } else { y }]);
    }
    out
}

/// At most `max` evenly spread points (plotting thousands per run costs frame time).
fn thin(points: Vec<[f64; 2]>, max: usize) -> Vec<[f64; 2]> {
    if points.len() <= max {
        return points;
    }
    let stride = points.len().div_ceil(max);
    let last = points.last().copied();
    let mut out: Vec<[f64; 2]> = points.into_iter().step_by(stride).collect();
    if let Some(p) = last
        && out.last() != Some(&p)
    {
        out.push(p);
    }
    out
}

/// How a run is named in the legends: arm and repeat, and the machine when several
/// reports are overlaid.
fn run_name(app: &AnntApp, r: &super::RunView) -> String {
    match app.compare.get(r.source).filter(|_| app.compare.len() > 1) {
        Some(o) => format!("{} #{} · {}", r.arm, r.repeat + 1, o.label),
        None => format!("{} #{}", r.arm, r.repeat + 1),
    }
}

/// Overlaid reports share the arm's colour and differ in the line: the first solid, the
/// second dashed, the third dotted, and so on round.
fn source_style(source: usize) -> LineStyle {
    match source % 3 {
        0 => LineStyle::Solid,
        1 => LineStyle::Dashed { length: 10.0 },
        _ => LineStyle::Dotted { spacing: 6.0 },
    }
}

/// Points per run a chart draws.
const PLOT_POINTS: usize = 600;

pub fn curves_ui(app: &mut AnntApp, ui: &mut egui::Ui) {
    for r in app.runs.iter() {
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
            ui.colored_label(arm_colour(&app.runs, &r.arm), run_name(app, r));
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
    ui.horizontal(|ui| {
        ui.label("x axis:");
        ui.radio_value(&mut app.x_axis, XAxis::Step, "step");
        ui.radio_value(&mut app.x_axis, XAxis::Epoch, "epoch");
        ui.radio_value(&mut app.x_axis, XAxis::Wall, "wall time (s)");
        ui.separator();
        ui.add(egui::Slider::new(&mut app.smoothing, 0.0..=0.99).text("loss smoothing"))
            .on_hover_text("Exponential moving average of the per-step loss (TensorBoard's smoothing, debiased); the raw loss is drawn faint behind it");
    });
    if app.runs.is_empty() {
        ui.add_space(40.0);
        ui.vertical_centered(|ui| {
            ui.label("Press Start: the baseline and the tuned arm train one after the other.");
            ui.label("Per-step training loss, images/s, learning rate and memory appear here within seconds, test and train accuracy after each epoch.");
        });
        return;
    }
    let axis = app.x_axis;
    let fp16 = app
        .runs
        .iter()
        .any(|r| r.points.iter().any(|p| p.loss_scale.is_some()));
    let rows = 3.0;
    let height = ((ui.available_height() - 10.0) / rows).max(110.0);
    let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
    // Per-step series: x from the step, its epoch fraction or its wall time.
    let step_x = |r: &super::RunView, p: &annt::bench::result::CurvePoint| match axis {
        XAxis::Step => p.step as f64,
        XAxis::Epoch => p.step as f64 / r.steps_per_epoch.max(1) as f64,
        XAxis::Wall => p.wall_secs,
    };
    let epoch_x = |e: &annt::bench::result::EpochRecord| match axis {
        XAxis::Step => e.optimizer_steps as f64,
        XAxis::Epoch => e.epoch as f64,
        XAxis::Wall => e.wall_secs,
    };
    struct Series {
        name: String,
        colour: egui::Color32,
        points: Vec<[f64; 2]>,
        faint: bool,
        style: LineStyle,
    }
    // A run's line: its name, colour and style, whatever it plots.
    let series = |r: &super::RunView, points: Vec<[f64; 2]>| Series {
        name: run_name(app, r),
        colour: arm_colour(&app.runs, &r.arm),
        style: source_style(r.source),
        points,
        faint: false,
    };
    let per_step = |f: &dyn Fn(&annt::bench::result::CurvePoint) -> Option<f64>| -> Vec<Series> {
        app.runs
            .iter()
            .map(|r| {
                let points = r
                    .points
                    .iter()
                    .filter_map(|p| f(p).filter(|v| v.is_finite()).map(|v| [step_x(r, p), v]))
                    .collect();
                series(r, thin(points, PLOT_POINTS))
            })
            .collect()
    };
    let per_epoch = |f: &dyn Fn(&annt::bench::result::EpochRecord) -> f64| -> Vec<Series> {
        app.runs
            .iter()
            .map(|r| series(r, r.epochs.iter().map(|e| [epoch_x(e), f(e)]).collect()))
            .collect()
    };
    // The loss: raw (faint) and smoothed.
    let mut loss = Vec::new();
    for r in &app.runs {
        let raw: Vec<[f64; 2]> = r
            .points
            .iter()
            .filter(|p| p.loss.is_finite())
            .map(|p| [step_x(r, p), p.loss])
            .collect();
        if app.smoothing > 0.0 {
            let line = series(r, thin(raw.clone(), PLOT_POINTS));
            loss.push(Series {
                colour: line.colour.gamma_multiply(0.35),
                faint: true,
                ..line
            });
        }
        loss.push(series(r, thin(smooth(&raw, app.smoothing), PLOT_POINTS)));
    }
    let mut memory = per_step(&|p| p.host_mib);
    for (s, r) in per_step(&|p| p.device_mib).into_iter().zip(&app.runs) {
        if !s.points.is_empty() {
            memory.push(Series {
                name: format!("{} device", run_name(app, r)),
                ..s
            });
        }
    }
    let mut charts: Vec<(&str, &str, Vec<Series>)> = vec![
        (
            "Training loss (per step)",
            "appears after the first steps",
            loss,
        ),
        (
            "Test accuracy (%)",
            "appears after the first epoch's evaluation",
            per_epoch(&|e| 100.0 * e.test_accuracy),
        ),
        (
            "Images/s (timed steps so far)",
            "appears once the warm-up steps are done",
            per_step(&|p| (p.images_per_sec > 0.0).then_some(p.images_per_sec)),
        ),
        (
            "Train accuracy (%)",
            "appears after the first epoch",
            per_epoch(&|e| 100.0 * e.train_accuracy),
        ),
        (
            "Learning rate",
            "appears after the first steps",
            per_step(&|p| Some(p.lr)),
        ),
        (
            "Memory in use (MiB): host, and device where there is one",
            "appears after the first steps",
            memory,
        ),
    ];
    if fp16 {
        charts.push((
            "Loss scale (fp16)",
            "appears after the first steps",
            per_step(&|p| p.loss_scale),
        ));
    }
    egui::Grid::new("charts").num_columns(2).show(ui, |ui| {
        for (i, (title, hint, lines)) in charts.into_iter().enumerate() {
            ui.vertical(|ui| {
                ui.label(title);
                if lines.iter().all(|s| s.points.is_empty()) {
                    // A hint, not axes around nothing.
                    let (rect, _) = ui.allocate_exact_size(
                        egui::vec2(width, height - 24.0),
                        egui::Sense::hover(),
                    );
                    ui.painter().rect_stroke(
                        rect,
                        4.0,
                        ui.visuals().widgets.noninteractive.bg_stroke,
                        egui::StrokeKind::Inside,
                    );
                    ui.painter().text(
                        rect.center(),
                        egui::Align2::CENTER_CENTER,
                        format!("{title}: {hint}"),
                        egui::FontId::proportional(13.0),
                        ui.visuals().weak_text_color(),
                    );
                } else {
                    Plot::new(title)
                        // The loss's faint raw line shares its run's name: the legend shows
                        // the smoothed line's colour (drawn last), not a grey mix.
                        .legend(
                            Legend::default().color_conflict_handling(
                                egui_plot::ColorConflictHandling::PickLast,
                            ),
                        )
                        .height(height - 24.0)
                        .width(width)
                        .x_axis_label(axis.label())
                        .show(ui, |p| {
                            for s in lines {
                                let line = Line::new(s.name, PlotPoints::from(s.points))
                                    .color(s.colour)
                                    .style(s.style);
                                p.line(if s.faint { line.width(1.0) } else { line });
                            }
                        });
                }
            });
            if i % 2 == 1 {
                ui.end_row();
            }
        }
    });
}

/// Columns of the comparison table; a click on a header sorts by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Plan order (the baseline first).
    Order,
    Accuracy,
    MacroF1,
    Wall,
    Train,
    ImagesPerSec,
    Memory,
    DeviceMemory,
    StepMs,
    Speedup,
    /// Shown only when the session has a target accuracy.
    TimeToTarget,
}

/// The columns, each with the definition its tooltip shows (the reports print the same).
/// Headers are short so that every column fits beside the settings at 1280 px; each
/// one's tooltip names it in full with its definition.
pub(super) const COLUMNS: [(Column, &str, &str); 12] = [
    (Column::Order, "arm", definitions::REPEATS),
    (Column::Speedup, "speed-up", definitions::SPEEDUP),
    (Column::ImagesPerSec, "img/s", definitions::IMAGES_PER_SEC),
    (Column::Accuracy, "test acc", definitions::REPEATS),
    (Column::MacroF1, "F1", definitions::REPEATS),
    (Column::Wall, "wall s", definitions::TRAIN_TIME),
    (Column::Train, "train s", definitions::TRAIN_TIME),
    (Column::Memory, "host MiB", definitions::PEAK_HOST),
    (Column::DeviceMemory, "device MiB", definitions::PEAK_DEVICE),
    (Column::StepMs, "ms/step", definitions::IMAGES_PER_SEC),
    (Column::Order, "steps", definitions::REPEATS),
    (
        Column::TimeToTarget,
        "to target s",
        definitions::TIME_TO_TARGET,
    ),
];

/// Each column's full name, for its tooltip.
const FULL_NAMES: [&str; 12] = [
    "arm [finished runs / runs]",
    "speed-up vs baseline (images/s ratio)",
    "images per second (training)",
    "test accuracy (final epoch)",
    "macro-F1 (final epoch)",
    "wall time in seconds (training + evaluation)",
    "training time in seconds",
    "peak host memory (MiB)",
    "peak device memory (MiB)",
    "milliseconds per optimiser step (hover a cell for data / host-to-device / forward / backward / optimiser)",
    "optimiser steps (micro-batch × accumulation)",
    "time to the target test accuracy in seconds (k/n: only k of n finished runs reached it)",
];

/// What the bottom panel shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BottomTab {
    #[default]
    Table,
    Verdict,
    StepTime,
    Confusion,
}

/// A row's arm cell: the arm, what kept runs out of its figures, and how many runs the
/// figures rest on (finished/all).
pub fn row_label(a: &ArmSummary) -> String {
    format!("{} [{}/{}]", arm_name(a), a.runs_counted, a.runs_total)
}

fn phase(a: &ArmSummary, p: Phase) -> f64 {
    a.phase_ms_per_step
        .iter()
        .find(|x| x.0 == p)
        .map_or(0.0, |x| x.1)
}

fn step_ms(a: &ArmSummary) -> f64 {
    a.phase_ms_per_step.iter().map(|x| x.1).sum()
}

fn key(a: &ArmSummary, c: Column) -> f64 {
    match c {
        Column::Order => 0.0,
        Column::Accuracy => a.test_accuracy.mean,
        Column::MacroF1 => a.macro_f1.mean,
        Column::Wall => a.wall_secs.mean,
        Column::Train => a.train_secs.mean,
        Column::ImagesPerSec => a.images_per_sec.mean,
        Column::Memory => a.peak_host.mean,
        Column::DeviceMemory => a.peak_device.mean,
        Column::StepMs => step_ms(a),
        // An arm with nothing to compare sorts below every measured one.
        Column::Speedup => a.speedup_vs_baseline.unwrap_or(f64::NEG_INFINITY),
        // Not reached sorts after every arm that reached it.
        Column::TimeToTarget => a
            .time_to_target_secs
            .as_ref()
            .filter(|t| t.n > 0)
            .map_or(f64::INFINITY, |t| t.mean),
    }
}

/// How the comparison table is sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub column: Column,
    pub descending: bool,
}

impl Sort {
    /// The plan's own order, as the session ran it.
    pub const PLAN: Sort = Sort {
        column: Column::Order,
        descending: false,
    };
}

/// Row order for a sort: indices into `rows` (stable, so ties keep plan order).
pub fn sorted(rows: &[ArmSummary], Sort { column, descending }: Sort) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    if column != Column::Order {
        idx.sort_by(|&i, &j| key(&rows[i], column).total_cmp(&key(&rows[j], column)));
    }
    if descending {
        idx.reverse();
    }
    idx
}

/// The recorded sessions, newest first (read on a helper thread each time the menu opens).
fn sessions_menu(app: &mut AnntApp, ui: &mut egui::Ui) {
    ui.set_min_width(380.0);
    if app.sessions_list.is_none() && app.sessions_job.is_none() {
        let root = app.sessions_root.clone();
        app.sessions_job = Some(super::jobs::spawn(move || {
            root.and_then(|r| annt::engine::journal::list(&r).ok())
                .unwrap_or_default()
        }));
    }
    let Some(list) = app.sessions_list.clone() else {
        ui.label("reading…");
        return;
    };
    if list.is_empty() {
        ui.label("no sessions recorded yet");
    }
    for s in list.iter().take(20) {
        let text = match &s.problem {
            Some(p) => format!("{} — unreadable: {p}", s.id),
            None => format!(
                "{} · {} — {} run(s), {}",
                s.started,
                s.preset,
                s.runs,
                if s.finished {
                    "finished"
                } else {
                    "interrupted"
                }
            ),
        };
        ui.horizontal(|ui| {
            if ui
                .add_enabled(s.problem.is_none(), egui::Button::new(text))
                .on_hover_text(format!("Show this session's results (folder {})", s.id))
                .clicked()
            {
                app.act(UiAction::OpenSession(s.id.clone()));
                // Read afresh next time (a session may have finished meanwhile).
                app.sessions_list = None;
                ui.close();
            }
            if s.resumable
                && ui
                    .add_enabled(!app.is_running(), egui::Button::new("Resume"))
                    .on_hover_text(
                        "Continue it: finished runs are kept, the interrupted one goes on from its last checkpoint",
                    )
                    .on_disabled_hover_text("A session is running")
                    .clicked()
            {
                app.act(UiAction::ResumeSession(s.id.clone()));
                app.sessions_list = None;
                ui.close();
            }
        });
    }
}

pub fn table_ui(app: &mut AnntApp, ui: &mut egui::Ui) {
    // Wrapped: on a narrow window the buttons flow onto a second line instead of being cut.
    ui.horizontal_wrapped(|ui| {
        ui.heading("Comparison");
        let has = app.session.is_some();
        if ui
            .add_enabled(has, egui::Button::new("Save report…"))
            .clicked()
        {
            app.act(UiAction::OpenDialog(Dialog::SaveReport));
        }
        let l = ui.label("or to path:");
        ui.add(egui::TextEdit::singleline(&mut app.report_path).desired_width(180.0))
            .labelled_by(l.id);
        if ui
            .add_enabled(has, egui::Button::new("Save to path"))
            .clicked()
        {
            app.act(UiAction::SaveReport);
        }
        ui.menu_button("Sessions", |ui| sessions_menu(app, ui));
        if ui
            .button("Open report…")
            .on_hover_text("Choose one JSON report, or several to overlay them (e.g. a GPU server's headless run beside a local one); dropping .json files on the window does the same")
            .clicked()
        {
            app.act(UiAction::OpenDialog(Dialog::OpenReport));
        }
        if ui
            .button("Open path")
            .on_hover_text("The JSON report at the path field; several paths separated by ; are overlaid")
            .clicked()
        {
            app.act(UiAction::OpenReport);
        }
        if ui
            .add_enabled(
                app.selected_weights().is_some(),
                egui::Button::new("Save trained weights…"),
            )
            .on_hover_text("The selected row's arm (its last finished run)")
            .on_disabled_hover_text(
                "Turn on \"Keep each run's trained weights\" (Plan) before Start; then select a row",
            )
            .clicked()
        {
            app.act(UiAction::OpenDialog(Dialog::SaveWeights));
        }
    });
    let session = app.session.as_ref().or(app.live.as_ref());
    let Some(session) = session.cloned() else {
        ui.label(
            "Rows appear as each arm finishes; the report can be saved when the session ends.",
        );
        return;
    };
    // One thing at a time, each with the panel's whole width: the table's columns all fit
    // at 1280 px; the verdict and the confusion matrix have tabs of their own.
    ui.horizontal(|ui| {
        ui.selectable_value(&mut app.bottom_tab, BottomTab::Table, "Table");
        ui.selectable_value(
            &mut app.bottom_tab,
            BottomTab::Verdict,
            "Verdict per switch",
        );
        ui.selectable_value(&mut app.bottom_tab, BottomTab::StepTime, "Step time")
            .on_hover_text("Where each arm's optimiser step goes, phase by phase");
        ui.selectable_value(
            &mut app.bottom_tab,
            BottomTab::Confusion,
            "Confusion matrix",
        )
        .on_hover_text("Of the arm selected in the table");
    });
    let compare = app.compare.clone();
    if compare.len() > 1 {
        match app.bottom_tab {
            BottomTab::Table => {
                egui::ScrollArea::both()
                    .id_salt("table-scroll")
                    .show(ui, |ui| across_reports_ui(ui, &compare));
            }
            BottomTab::Verdict => {
                egui::ScrollArea::both()
                    .id_salt("verdict-scroll")
                    .show(ui, |ui| {
                        for (i, o) in compare.iter().enumerate() {
                            ui.label(
                                egui::RichText::new(format!("{} — {}", o.label, o.file)).strong(),
                            );
                            ui.push_id(i, |ui| verdict_ui(ui, &o.session));
                            ui.add_space(6.0);
                        }
                    });
            }
            BottomTab::StepTime => {
                let rows = compare
                    .iter()
                    .flat_map(|o| {
                        o.session
                            .summary
                            .iter()
                            .map(|a| (format!("{} · {}", arm_name(a), o.label), a.clone()))
                    })
                    .collect::<Vec<_>>();
                step_time_ui(ui, &rows);
            }
            BottomTab::Confusion => {
                ui.label(format!(
                    "Of the first report ({} — {}):",
                    compare[0].label, compare[0].file
                ));
                confusion_ui(app, ui, &session);
            }
        }
        return;
    }
    match app.bottom_tab {
        BottomTab::Table => {
            egui::ScrollArea::both()
                .id_salt("table-scroll")
                .show(ui, |ui| table_grid(app, ui, &session));
        }
        BottomTab::Verdict => {
            egui::ScrollArea::both()
                .id_salt("verdict-scroll")
                .show(ui, |ui| verdict_ui(ui, &session));
        }
        BottomTab::StepTime => {
            let rows = session
                .summary
                .iter()
                .map(|a| (arm_name(a), a.clone()))
                .collect::<Vec<_>>();
            step_time_ui(ui, &rows);
        }
        BottomTab::Confusion => confusion_ui(app, ui, &session),
    }
}

/// The comparison of several opened reports: one row per arm and report, each labelled
/// with the machine it ran on; the speed-up is within its own report (against that
/// report's baseline), "vs first" compares the same arm's images/s with the first report's.
fn across_reports_ui(ui: &mut egui::Ui, compare: &[super::Opened]) {
    ui.label(format!(
        "{} reports overlaid: the curves draw the first solid, the second dashed, the third dotted.",
        compare.len()
    ));
    const HEADER: [(&str, &str); 10] = [
        ("arm", definitions::REPEATS),
        (
            "machine",
            "The GPU the report's runs used, else its CPU and the threads annt trained with",
        ),
        ("report", "The JSON file"),
        ("speed-up", definitions::SPEEDUP),
        ("img/s", definitions::IMAGES_PER_SEC),
        (
            "vs first",
            "This arm's images/s ÷ the same arm's in the first report: how much faster this machine trains it",
        ),
        ("test acc", definitions::REPEATS),
        ("train s", definitions::TRAIN_TIME),
        ("host MiB", definitions::PEAK_HOST),
        ("device MiB", definitions::PEAK_DEVICE),
    ];
    let first = &compare[0].session.summary;
    egui::Grid::new("across-reports")
        .striped(true)
        .num_columns(HEADER.len())
        .show(ui, |ui| {
            for (h, d) in HEADER {
                ui.label(egui::RichText::new(h).strong()).on_hover_text(d);
            }
            ui.end_row();
            for o in compare {
                for a in &o.session.summary {
                    ui.label(row_label(a));
                    ui.label(&o.label);
                    ui.label(&o.file);
                    ui.label(speedup(a.speedup_vs_baseline));
                    ui.label(num(&a.images_per_sec, 1));
                    let vs_first = first
                        .iter()
                        .find(|b| b.arm == a.arm)
                        .filter(|b| {
                            b.images_per_sec.n > 0
                                && a.images_per_sec.n > 0
                                && b.images_per_sec.mean > 0.0
                        })
                        .map(|b| a.images_per_sec.mean / b.images_per_sec.mean);
                    ui.label(speedup(vs_first));
                    ui.label(pct(&a.test_accuracy));
                    ui.label(num(&a.train_secs, 1));
                    ui.label(mib_stat(&a.peak_host));
                    ui.label(mib_stat(&a.peak_device));
                    ui.end_row();
                }
            }
        });
    for o in compare {
        if let Some(env) = &o.session.environment {
            ui.label(egui::RichText::new(format!("{}: {}", o.file, env.one_line())).weak());
        }
    }
}

/// The step-time breakdown as one stacked horizontal bar per arm: data wait, host→device,
/// forward, backward, optimiser (ms per optimiser step, means over finished runs); `rows`
/// are the bars' names and arms.
fn step_time_ui(ui: &mut egui::Ui, rows: &[(String, ArmSummary)]) {
    use egui_plot::{Bar, BarChart};
    if rows.iter().all(|(_, a)| a.phase_ms_per_step.is_empty()) {
        ui.label("No timed steps yet: the breakdown appears when an arm finishes.");
        return;
    }
    let names: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    let colours = [
        egui::Color32::from_rgb(150, 150, 150),
        egui::Color32::from_rgb(23, 190, 207),
        egui::Color32::from_rgb(31, 119, 180),
        egui::Color32::from_rgb(214, 39, 40),
        egui::Color32::from_rgb(44, 160, 44),
    ];
    let mut charts: Vec<BarChart> = Vec::new();
    for (k, p) in Phase::ALL.iter().enumerate() {
        let bars = rows
            .iter()
            .enumerate()
            .map(|(i, (_, a))| {
                Bar::new(i as f64, phase(a, *p)).name(format!(
                    "{}: {} {:.1} ms",
                    names[i],
                    p.label().replace('→', "-to-"),
                    phase(a, *p)
                ))
            })
            .collect();
        let refs: Vec<&BarChart> = charts.iter().collect();
        // The default font has no arrow glyph: "host→device" is spelt out.
        let chart = BarChart::new(p.label().replace('→', "-to-"), bars)
            .color(colours[k % colours.len()])
            .width(0.6)
            .horizontal()
            .stack_on(&refs);
        charts.push(chart);
    }
    let labels = names.clone();
    Plot::new("step-time")
        .legend(Legend::default())
        .height(ui.available_height().max(120.0))
        .x_axis_label("ms per optimiser step")
        .y_axis_formatter(move |mark, _| {
            let i = mark.value.round();
            if (mark.value - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_axis_min_width(160.0)
        .allow_drag(false)
        .allow_scroll(false)
        .show(ui, |plot| {
            for c in charts {
                plot.bar_chart(c);
            }
        });
}

/// The verdict per switch ([`annt::bench::verdict`]): the same table every report has.
fn verdict_ui(ui: &mut egui::Ui, session: &SessionResult) {
    use annt::report::fmt::{VERDICT_HEADER, verdict_cells};
    let v = annt::bench::verdict::verdict(session);
    if !v.effects.is_empty() {
        egui::Grid::new("verdict")
            .striped(true)
            .num_columns(VERDICT_HEADER.len())
            .show(ui, |ui| {
                for h in VERDICT_HEADER {
                    ui.label(egui::RichText::new(h).strong());
                }
                ui.end_row();
                for e in &v.effects {
                    let cells = verdict_cells(e);
                    for (i, c) in cells.iter().enumerate() {
                        if i + 1 == cells.len() {
                            let colour = match e.conclusion {
                                annt::bench::verdict::Conclusion::Better => {
                                    egui::Color32::from_rgb(80, 190, 90)
                                }
                                annt::bench::verdict::Conclusion::Worse => {
                                    egui::Color32::from_rgb(220, 90, 80)
                                }
                                _ => ui.visuals().weak_text_color(),
                            };
                            ui.colored_label(colour, c);
                        } else {
                            ui.label(c);
                        }
                    }
                    ui.end_row();
                }
            });
    }
    for i in &v.interactions {
        ui.label(format!(
            "{} on {}: {} (estimate, untested; {} = no interaction)",
            i.factors,
            i.metric.label(),
            i.estimate_text(),
            i.neutral_text()
        ));
    }
    for n in &v.notes {
        ui.label(egui::RichText::new(n).weak());
    }
}

fn table_grid(app: &mut AnntApp, ui: &mut egui::Ui, session: &SessionResult) {
    let rows = &session.summary;
    let order = sorted(rows, app.sort);
    let target = annt::report::fmt::target_accuracy(session);
    let shown: Vec<usize> = (0..COLUMNS.len())
        .filter(|&i| COLUMNS[i].0 != Column::TimeToTarget || target.is_some())
        .collect();
    egui::Grid::new("comparison")
        .striped(true)
        .num_columns(shown.len())
        .show(ui, |ui| {
            for &i in &shown {
                let (column, title, definition) = &COLUMNS[i];
                // "optimiser steps" is not sortable: it shares `Order` with "arm".
                let sortable = i == 0 || *column != Column::Order;
                let arrow = if app.sort.column == *column && sortable && app.sort != Sort::PLAN {
                    if app.sort.descending {
                        " (desc)"
                    } else {
                        " (asc)"
                    }
                } else {
                    ""
                };
                let text = egui::RichText::new(format!("{title}{arrow}")).strong();
                if sortable {
                    if ui
                        .add(egui::Button::new(text).frame(false))
                        .on_hover_text(format!(
                            "{}\n\n{definition}\n\nClick to sort by this column (again to reverse).",
                            FULL_NAMES[i]
                        ))
                        .clicked()
                    {
                        app.sort = if app.sort.column == *column {
                            Sort {
                                column: *column,
                                descending: !app.sort.descending,
                            }
                        } else {
                            // Bigger is better first, except for times and memory.
                            let desc = !matches!(
                                column,
                                Column::Wall
                                    | Column::Train
                                    | Column::Memory
                                    | Column::DeviceMemory
                                    | Column::StepMs
                                    | Column::TimeToTarget
                            ) && *column != Column::Order;
                            Sort {
                                column: *column,
                                descending: desc,
                            }
                        };
                    }
                } else {
                    ui.label(text)
                        .on_hover_text(format!("{}\n\n{definition}", FULL_NAMES[i]));
                }
            }
            ui.end_row();
            for i in order {
                let a = &rows[i];
                let run = session.runs.iter().find(|r| r.arm == a.arm);
                let name = row_label(a);
                let selected = app.selected_arm.as_deref() == Some(a.arm.as_str());
                if ui
                    .selectable_label(selected, name)
                    .on_hover_text("select it: the Confusion matrix tab shows its matrix, Save trained weights… saves its weights")
                    .clicked()
                {
                    app.selected_arm = Some(a.arm.clone());
                }
                ui.label(speedup(a.speedup_vs_baseline));
                ui.label(num(&a.images_per_sec, 1));
                ui.label(pct(&a.test_accuracy));
                ui.label(num(&a.macro_f1, 3));
                ui.label(num(&a.wall_secs, 1));
                ui.label(num(&a.train_secs, 1));
                ui.label(mib_stat(&a.peak_host));
                ui.label(mib_stat(&a.peak_device));
                ui.label(format!("{:.0}", step_ms(a))).on_hover_text(format!(
                    "data {:.1} / host-to-device {:.1} / forward {:.1} / backward {:.1} / optimiser {:.1} ms",
                    phase(a, Phase::DataWait),
                    phase(a, Phase::HostToDevice),
                    phase(a, Phase::Forward),
                    phase(a, Phase::Backward),
                    phase(a, Phase::Optimizer)
                ));
                ui.label(run.map_or("–".into(), |r| {
                    format!(
                        "{} ({}×{})",
                        r.optimizer_steps,
                        r.micro_batch,
                        r.effective_batch / r.micro_batch.max(1)
                    )
                }));
                if let Some(t) = target {
                    ui.label(annt::report::fmt::time_to_target(a)).on_hover_text(format!(
                        "until test accuracy first reached {:.1} %",
                        100.0 * t
                    ));
                }
                ui.end_row();
            }
        });
    let paper = annt::report::fmt::paper_rows(session);
    if let Some(p) = session.paper.as_ref().filter(|_| !paper.is_empty()) {
        ui.add_space(6.0);
        ui.label(egui::RichText::new("The paper's figures beside these").strong())
            .on_hover_text(format!("{}. {}", p.source, p.note));
        egui::Grid::new("paper").striped(true).show(ui, |ui| {
            for h in annt::report::fmt::PAPER_HEADER {
                ui.label(egui::RichText::new(h).strong());
            }
            ui.end_row();
            for row in &paper {
                for c in row {
                    ui.label(c);
                }
                ui.end_row();
            }
        });
        ui.label(egui::RichText::new(&p.note).weak());
    }
    for n in &session.notes {
        ui.label(egui::RichText::new(n).weak());
    }
}

/// The confusion matrix of the selected arm's last finished run: rows are true classes,
/// columns predictions, shaded by the share of the row.
fn confusion_ui(app: &mut AnntApp, ui: &mut egui::Ui, session: &SessionResult) {
    let arm = app
        .selected_arm
        .clone()
        .filter(|a| session.runs.iter().any(|r| &r.arm == a))
        .or_else(|| session.runs.first().map(|r| r.arm.clone()));
    let Some(arm) = arm else {
        return;
    };
    let Some(run) = session
        .runs
        .iter()
        .rev()
        // A run stopped before its first evaluation has an all-zero matrix: nothing to show.
        .find(|r| r.arm == arm && r.confusion.iter().any(|&c| c > 0))
    else {
        ui.label(format!(
            "{arm}: no confusion matrix (the run did not evaluate)"
        ));
        return;
    };
    let n = run.classes.len();
    ui.label(
        egui::RichText::new(format!(
            "Confusion matrix, {arm} (rows: true class, columns: predicted)"
        ))
        .strong(),
    );
    let avail = ui.available_size();
    let label_w = 90.0;
    let cell = ((avail.x - label_w) / n as f32)
        .min((avail.y - 10.0) / n as f32)
        .clamp(3.0, 26.0);
    let (rect, response) = ui.allocate_exact_size(
        egui::vec2(label_w + cell * n as f32, cell * n as f32),
        egui::Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    let text_colour = ui.visuals().text_color();
    let mut hovered = None;
    for t in 0..n {
        let row = &run.confusion[t * n..(t + 1) * n];
        let total: u64 = row.iter().sum::<u64>().max(1);
        let y = rect.top() + t as f32 * cell;
        if cell >= 10.0 {
            painter.text(
                egui::pos2(rect.left() + label_w - 4.0, y + cell / 2.0),
                egui::Align2::RIGHT_CENTER,
                &run.classes[t],
                egui::FontId::proportional((cell * 0.6).min(12.0)),
                text_colour,
            );
        }
        for (p, &count) in row.iter().enumerate() {
            let share = count as f32 / total as f32;
            let r = egui::Rect::from_min_size(
                egui::pos2(rect.left() + label_w + p as f32 * cell, y),
                egui::vec2(cell - 1.0, cell - 1.0),
            );
            let colour = if t == p {
                egui::Color32::from_rgb(30, 110 + (145.0 * share) as u8, 60)
            } else {
                egui::Color32::from_rgb(60 + (195.0 * share.sqrt()) as u8, 40, 40)
            };
            painter.rect_filled(r, 1.0, colour);
            if cell >= 18.0 && count > 0 {
                painter.text(
                    r.center(),
                    egui::Align2::CENTER_CENTER,
                    count.to_string(),
                    egui::FontId::proportional(9.0),
                    egui::Color32::WHITE,
                );
            }
            if response.hovered() && response.hover_pos().is_some_and(|pos| r.contains(pos)) {
                hovered = Some((t, p, count, total));
            }
        }
    }
    if let Some((t, p, count, total)) = hovered {
        response.on_hover_text(format!(
            "true {}, predicted {}: {count} of {total} ({:.1} %)",
            run.classes[t],
            run.classes[p],
            100.0 * count as f64 / total as f64
        ));
    }
}
