//! `annt selftest`'s checks as tests, for a machine with an NVIDIA GPU:
//! `cargo test --features cuda,cudnn --test selftest_gpu -- --ignored`. Without the `cuda`
//! feature this file is empty; the same harness runs on the CPU in `cargo test`
//! (`engine::selftest` unit tests).

#[cfg(feature = "cuda")]
mod gpu {
    use annt::engine::selftest::{op_checks, run, smoke_runs};
    use candle_core::Device;

    fn gpu() -> Device {
        Device::new_cuda(0).expect("this test needs CUDA device 0")
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn every_gpu_kernel_matches_the_cpu_reference() {
        let checks = op_checks(&gpu(), &Device::Cpu);
        let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn every_model_family_trains_a_few_steps_on_the_gpu() {
        let smoke = smoke_runs(&gpu());
        let failed: Vec<_> = smoke.iter().filter(|s| !s.passed).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn the_whole_selftest_passes_including_pinned_memory() {
        let report = run(&gpu());
        assert!(report.passed(), "{}", report.table());
    }
}
