//! Start-up: the native window, its icon and title, the persisted settings, and a data
//! path or JSON reports given on the command line.

use super::{AnntApp, Settings};

/// Opens the window (the `annt` binary with no arguments). `paths` come from the command
/// line (`Exec=annt %F`) and are treated as a drop would be: JSON reports are opened (two
/// or more overlaid); otherwise the first, a data-set folder or archive, is chosen and
/// validated.
pub fn run(paths: Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_inner_size([1280.0, 820.0])
        .with_title("annt")
        // Matches the desktop entry's name (annt.desktop), so docks show its icon.
        .with_app_id("annt");
    // The app icon (assets/icons/annt-256.png, rendered from assets/icon.svg), built in.
    let png = include_bytes!("../../assets/icons/annt-256.png");
    match image::load_from_memory_with_format(png, image::ImageFormat::Png) {
        Ok(icon) => {
            let rgba = icon.to_rgba8();
            viewport = viewport.with_icon(egui::IconData {
                width: rgba.width(),
                height: rgba.height(),
                rgba: rgba.into_raw(),
            });
        }
        Err(e) => eprintln!("warning: window icon: {e}"),
    }
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "annt",
        options,
        Box::new(move |cc| {
            let settings = cc
                .storage
                .and_then(|s| eframe::get_value::<Settings>(s, eframe::APP_KEY))
                .unwrap_or_default();
            let mut app = AnntApp::new(settings);
            app.open_paths(paths);
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window ({e}); the command line works without one: `annt --help`"
        )
    })
}
