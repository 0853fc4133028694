//! `annt models`: every model variant with its parameter count.

use annt::models::VARIANTS;
use clap::Args;
use std::fmt::Write as _;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Class count the classification head is sized for.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub classes: u32,
    /// Print a JSON list instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    name: &'static str,
    family: annt::models::Family,
    params: usize,
    classes: usize,
    resolution: usize,
    pretrained: bool,
    cpu_friendly: bool,
    description: &'static str,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let classes = args.classes as usize;
    let mut rows = Vec::new();
    let counts = annt::engine::inspect::param_counts(classes)?;
    for (v, (_, params)) in VARIANTS.iter().zip(counts) {
        rows.push(Row {
            name: v.name,
            family: v.family,
            params,
            classes,
            resolution: v.resolution,
            pretrained: v.pretrained,
            cpu_friendly: v.cpu_friendly,
            description: v.description,
        });
    }
    if args.json {
        return super::print_out(&(serde_json::to_string_pretty(&rows)? + "\n"));
    }
    let mut out = String::new();
    writeln!(
        out,
        "{:<16} {:>12} {:>5}  {:<10} {:<4}  description",
        "model", "params", "res", "pretrained", "cpu"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<16} {:>12} {:>5}  {:<10} {:<4}  {}",
            r.name,
            group_thousands(r.params),
            r.resolution,
            if r.pretrained { "expected" } else { "no" },
            if r.cpu_friendly { "yes" } else { "-" },
            r.description
        )?;
    }
    writeln!(
        out,
        "\nparameter counts are for {classes} classes; `pretrained: expected` means the paper's recipe fine-tunes ImageNet weights (safetensors, torchvision/timm/Hugging Face names)"
    )?;
    super::print_out(&out)
}

fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
