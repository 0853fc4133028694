//! `annt selftest`: the GPU path checked against the CPU reference (see
//! `annt::engine::selftest`). Exit code 1 when any check fails.

use annt::config::DeviceChoice;
use clap::Args;

#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// The device to check: cuda or cuda:N (the default in the CUDA build); cpu has nothing
    /// to check, being the reference.
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SelftestArgs) -> anyhow::Result<()> {
    let choice = args.device.unwrap_or(if cfg!(feature = "cuda") {
        DeviceChoice::Cuda(0)
    } else {
        DeviceChoice::Cpu
    });
    let device =
        annt::engine::session::open_device(choice).map_err(|e| anyhow::anyhow!("selftest: {e}"))?;
    let report = annt::engine::selftest::run(&device);
    if args.json {
        super::print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        super::print_out(&report.table())?;
    }
    if !report.passed() {
        anyhow::bail!("selftest: {} of the checks failed", report.failures());
    }
    Ok(())
}
