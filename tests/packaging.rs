//! Packaging checks that are cheap enough for every CI run (no release build, no .deb):
//! the desktop entries validate, the icons have the sizes their names promise, the
//! cargo-deb metadata installs files that exist to the places desktops look, the macOS
//! plist and Windows WiX source are well-formed, and a path on the command line opens the
//! window (and a failure to open it reaches the log file).
//! Building and installing the real packages: packaging/linux/build-deb.sh, test-deb.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const DESKTOP_ENTRIES: [&str; 2] = [
    "packaging/linux/annt.desktop",
    "packaging/linux/annt-cuda.desktop",
];

#[test]
fn desktop_entries_pass_desktop_file_validate() {
    for entry in DESKTOP_ENTRIES {
        let out = Command::new("desktop-file-validate")
            .arg(root().join(entry))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run desktop-file-validate ({e}): install desktop-file-utils \
                     (apt-get install -y desktop-file-utils) to check {entry}"
                )
            });
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{entry}:\n{text}");
        // Hints are not failures, but this entry should have none.
        assert!(text.trim().is_empty(), "{entry}:\n{text}");
    }
}

/// The keys a desktop needs to start annt with a data set and show its icon.
#[test]
fn desktop_entries_open_data_sets_with_the_icon() {
    for (entry, exec) in DESKTOP_ENTRIES.iter().zip(["annt", "annt-cuda"]) {
        let text = read(entry);
        let key = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{entry}: no {k}="))
                .to_string()
        };
        assert_eq!(key("Exec"), format!("{exec} %F"), "{entry}");
        assert_eq!(key("TryExec"), exec, "{entry}");
        assert_eq!(key("Icon"), "annt", "{entry}");
        assert_eq!(key("Terminal"), "false", "{entry}");
        let mime = key("MimeType");
        for t in [
            "inode/directory",
            "application/x-tar",
            "application/gzip",
            "application/x-compressed-tar",
            "application/zip",
        ] {
            assert!(
                mime.split(';').any(|m| m == t),
                "{entry}: MimeType lacks {t}"
            );
        }
    }
}

const ICON_SIZES: [u32; 6] = [32, 48, 64, 128, 256, 512];

#[test]
fn icon_pngs_decode_at_their_sizes_with_transparent_corners() {
    for size in ICON_SIZES {
        let path = root().join(format!("assets/icons/annt-{size}.png"));
        let img = image::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_rgba8();
        assert_eq!(img.dimensions(), (size, size), "{}", path.display());
        // A rounded square: the corners show the desktop behind it.
        assert_eq!(img.get_pixel(0, 0)[3], 0, "{}", path.display());
        assert_eq!(
            img.get_pixel(size / 2, size / 2)[3],
            255,
            "{}",
            path.display()
        );
    }
    let svg = read("assets/icon.svg");
    assert!(svg.contains("<svg") && svg.contains("viewBox=\"0 0 512 512\""));
    check_xml("assets/icon.svg", &svg);
}

#[test]
fn macos_icns_and_windows_ico_hold_the_sizes() {
    // icns: "icns", big-endian total length, then (type, length) elements.
    let icns = std::fs::read(root().join("packaging/macos/annt.icns")).expect("icns");
    assert_eq!(&icns[..4], b"icns");
    assert_eq!(
        u32::from_be_bytes(icns[4..8].try_into().expect("4")) as usize,
        icns.len()
    );
    let mut types = Vec::new();
    let mut at = 8;
    while at + 8 <= icns.len() {
        types.push(String::from_utf8_lossy(&icns[at..at + 4]).into_owned());
        let len = u32::from_be_bytes(icns[at + 4..at + 8].try_into().expect("4")) as usize;
        assert!(
            len >= 8,
            "element {} of length {len}",
            types.last().expect("pushed")
        );
        at += len;
    }
    assert_eq!(at, icns.len(), "elements do not fill the file");
    for t in ["il32", "it32", "ic08", "ic09"] {
        assert!(
            types.iter().any(|x| x == t),
            "annt.icns lacks {t}: {types:?}"
        );
    }
    // ico: reserved 0, type 1, count, then 16-byte entries whose width byte 0 means 256.
    let ico = std::fs::read(root().join("packaging/windows/annt.ico")).expect("ico");
    assert_eq!(&ico[..4], &[0, 0, 1, 0]);
    let count = u16::from_le_bytes([ico[4], ico[5]]) as usize;
    let sizes: Vec<u32> = (0..count)
        .map(|i| match ico[6 + 16 * i] {
            0 => 256,
            w => u32::from(w),
        })
        .collect();
    for s in [16, 32, 48, 256] {
        assert!(sizes.contains(&s), "annt.ico lacks {s}px: {sizes:?}");
    }
}

fn deb_metadata() -> toml::Table {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]")
        .clone()
}

/// (source, destination) pairs of one cargo-deb asset list.
fn assets(deb: &toml::Table) -> Vec<(String, String)> {
    deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("[source, dest, mode]");
            (
                a[0].as_str().expect("source").to_string(),
                a[1].as_str().expect("dest").to_string(),
            )
        })
        .collect()
}

/// Files matching an asset source: a literal path or `dir/*.ext`.
fn matching(source: &str) -> Vec<PathBuf> {
    match source.split_once("/*") {
        Some((dir, suffix)) => std::fs::read_dir(root().join(dir))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(suffix))
                    .collect()
            })
            .unwrap_or_default(),
        None => Some(root().join(source))
            .filter(|p| p.is_file())
            .into_iter()
            .collect(),
    }
}

#[test]
fn deb_packages_install_existing_files_where_desktops_look() {
    let deb = deb_metadata();
    let cuda = deb["variants"]["cuda"]
        .as_table()
        .expect("variants.cuda")
        .clone();
    for (name, table) in [("annt", &deb), ("annt-cuda", &cuda)] {
        for (source, _) in assets(table) {
            // Built by cargo-deb itself.
            if source.starts_with("target/release/") {
                continue;
            }
            assert!(
                !matching(&source).is_empty(),
                "{name}: asset {source} matches no file"
            );
        }
    }
    let cpu = assets(&deb);
    let has = |src: &str, dest: &str| cpu.iter().any(|(s, d)| s == src && d == dest);
    assert!(has("target/release/annt", "usr/bin/"));
    assert!(has(
        "packaging/linux/annt.desktop",
        "usr/share/applications/"
    ));
    assert!(has(
        "assets/icon.svg",
        "usr/share/icons/hicolor/scalable/apps/annt.svg"
    ));
    for s in ICON_SIZES {
        assert!(
            has(
                &format!("assets/icons/annt-{s}.png"),
                &format!("usr/share/icons/hicolor/{s}x{s}/apps/annt.png")
            ),
            "annt: no {s}px icon in the hicolor theme"
        );
    }
    assert!(has("presets/*.toml", "usr/share/annt/presets/"));
    assert!(has("README.md", "usr/share/doc/annt/README.md"));

    // Everything the window loads at run time (dlopen, invisible to $auto).
    let depends = deb["depends"].as_str().expect("depends");
    for lib in [
        "libx11-6",
        "libxcursor1",
        "libxrandr2",
        "libxi6",
        "libxkbcommon-x11-0",
        "libgl1",
        "libegl1",
        "libdbus-1-3",
    ] {
        assert!(depends.split(", ").any(|d| d == lib), "depends lacks {lib}");
    }
    let recommends = deb["recommends"].as_str().expect("recommends");
    assert!(recommends.contains("xdg-desktop-portal-gtk") && recommends.contains("zenity"));

    // annt-cuda: its own binary and entry, the rest from annt.
    assert_eq!(cuda["name"].as_str(), Some("annt-cuda"));
    assert_eq!(cuda["features"].as_array().map(Vec::len), Some(1));
    assert_eq!(cuda["depends"].as_str(), Some("annt, libstdc++6"));
    let cuda_assets = assets(&cuda);
    assert!(cuda_assets.contains(&("target/release/annt".into(), "usr/bin/annt-cuda".into())));
    // No file in both packages, so dpkg installs them side by side.
    for (_, dest) in &cuda_assets {
        assert!(
            cpu.iter().all(|(_, d)| d != dest || dest.ends_with('/')),
            "{dest} in both"
        );
    }
}

#[test]
fn macos_plist_names_the_binary_and_the_icon() {
    let plist = read("packaging/macos/Info.plist");
    check_xml("packaging/macos/Info.plist", &plist);
    let value = |key: &str| {
        let at = plist
            .find(&format!("<key>{key}</key>"))
            .unwrap_or_else(|| panic!("Info.plist: no {key}"));
        let rest = &plist[at..];
        let start = rest.find("<string>").expect("<string>") + "<string>".len();
        let end = rest.find("</string>").expect("</string>");
        rest[start..end].to_string()
    };
    assert_eq!(value("CFBundleExecutable"), "annt");
    assert_eq!(value("CFBundlePackageType"), "APPL");
    assert!(
        root()
            .join("packaging/macos")
            .join(value("CFBundleIconFile"))
            .is_file()
    );
}

#[test]
fn windows_wxs_is_well_formed_and_uses_the_icon() {
    let wxs = read("packaging/windows/annt.wxs");
    check_xml("packaging/windows/annt.wxs", &wxs);
    for needle in [
        "UpgradeCode=",
        "$(var.ExeSource)",
        "$(var.IconSource)",
        "ComponentGroupRef Id=\"Presets\"",
        "Target=\"[INSTALLDIR]annt.exe\"",
    ] {
        assert!(wxs.contains(needle), "annt.wxs lacks {needle}");
    }
}

/// A small well-formedness check (no XML crate among the dependencies): every element
/// closes in order, attributes are quoted, comments and declarations are terminated.
fn check_xml(name: &str, text: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        rest = &rest[open..];
        let skip = |end: &str| rest.find(end).map(|i| i + end.len());
        let len = if rest.starts_with("<!--") {
            skip("-->")
        } else if rest.starts_with("<?") {
            skip("?>")
        } else if rest.starts_with("<!") {
            skip(">")
        } else {
            let end = tag_end(rest).unwrap_or_else(|| panic!("{name}: unterminated tag"));
            let tag = &rest[1..end];
            if let Some(closing) = tag.strip_prefix('/') {
                let top = stack.pop();
                assert_eq!(top.as_deref(), Some(closing.trim()), "{name}: </{closing}>");
            } else {
                let self_closing = tag.ends_with('/');
                let element = tag.trim_end_matches('/');
                let el_name: String = element.chars().take_while(|c| !c.is_whitespace()).collect();
                assert!(!el_name.is_empty(), "{name}: empty tag");
                check_attributes(name, &element[el_name.len()..]);
                if !self_closing {
                    stack.push(el_name);
                }
            }
            Some(end + 1)
        };
        let len = len.unwrap_or_else(|| panic!("{name}: unterminated comment or declaration"));
        rest = &rest[len..];
    }
    assert!(stack.is_empty(), "{name}: unclosed {stack:?}");
}

/// Index of the `>` that ends the tag at the start of `s`, outside quoted values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn check_attributes(name: &str, mut attrs: &str) {
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return;
        }
        let eq = attrs
            .find('=')
            .unwrap_or_else(|| panic!("{name}: attribute without value: {attrs}"));
        let key = attrs[..eq].trim();
        assert!(
            !key.is_empty() && !key.contains(char::is_whitespace),
            "{name}: bad attribute name {key:?}"
        );
        let value = attrs[eq + 1..].trim_start();
        let q = value
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .unwrap_or_else(|| panic!("{name}: unquoted value for {key}"));
        let close = value[1..]
            .find(q)
            .unwrap_or_else(|| panic!("{name}: unterminated value for {key}"));
        attrs = &value[close + 2..];
    }
}

#[test]
fn the_xml_check_catches_mistakes() {
    check_xml(
        "ok",
        "<?xml version=\"1.0\"?><!-- a > b --><a x=\"1>2\"><b/><c y='z'></c></a>",
    );
    for bad in [
        "<a><b></a></b>",
        "<a>",
        "<a x=1></a>",
        "<a x=\"1></a>",
        "<!-- open",
    ] {
        assert!(
            std::panic::catch_unwind(|| check_xml("bad", bad)).is_err(),
            "accepted {bad}"
        );
    }
}

/// `Exec=annt %F`: an existing path on the command line opens the window (here: fails to,
/// without a display) instead of being read as a subcommand, and the failure is in the log.
#[cfg(feature = "gui")]
#[test]
fn a_data_path_argument_opens_the_window_and_failures_reach_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("annt.log");
    let run = |args: &[&Path], log: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_annt"));
        cmd.args(args)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_STATE_HOME", dir.path().join("state"));
        match log {
            Some(l) => cmd.env("ANNT_LOG", l),
            None => cmd.env_remove("ANNT_LOG"),
        };
        cmd.output().expect("run annt")
    };
    let out = run(&[dir.path()], Some(&log));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open the window"), "{err}");
    let text = std::fs::read_to_string(&log).expect("log written");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains(" INFO start: annt "), "{text}");
    assert!(
        lines[0].contains(&dir.path().display().to_string()),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" ERROR cannot open the window")),
        "{text}"
    );

    // A log past 1 MiB is moved aside at the next start; a fresh one begins.
    let big = dir.path().join("big.log");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).expect("write");
    assert_eq!(run(&[dir.path()], Some(&big)).status.code(), Some(1));
    let old = dir.path().join("big.log.1");
    assert_eq!(
        std::fs::metadata(&old).expect("rotated").len(),
        (1 << 20) + 1
    );
    let fresh = std::fs::read_to_string(&big).expect("fresh log");
    assert!(fresh.starts_with(|c: char| c.is_ascii_digit()), "{fresh}");
    assert!(fresh.len() < 4096, "{} bytes", fresh.len());

    // Without ANNT_LOG the log goes to the state directory (Linux: $XDG_STATE_HOME).
    if cfg!(target_os = "linux") {
        let out = run(&[], None);
        assert_eq!(out.status.code(), Some(1));
        let default = dir.path().join("state/annt/annt.log");
        let text = std::fs::read_to_string(&default).expect("log in $XDG_STATE_HOME/annt");
        assert!(text.contains("cannot open the window"), "{text}");
    }

    // A path that does not exist is not a data set: the CLI reports the mistake (usage: 2).
    let missing = dir.path().join("no-such-folder");
    let out = run(&[&missing], Some(&log));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Subcommands still win.
    let out = run(&[Path::new("models"), Path::new("--json")], Some(&log));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
