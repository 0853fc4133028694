//! Small helpers shared by several domains: a version-stable RNG and atomic file writes, the
//! environment a result was measured in and the CUDA devices present.

pub mod atomic_write;
pub mod env;
pub mod gpu;
pub mod rng;

/// `text` as a file-name part: runs of anything but ASCII letters and digits become one `-`,
/// none at either end ("quick-cpu (built in)" → "quick-cpu-built-in").
pub fn file_safe(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_safe_collapses_everything_but_letters_and_digits() {
        assert_eq!(
            super::file_safe("quick-cpu (built in)"),
            "quick-cpu-built-in"
        );
        assert_eq!(super::file_safe("GAx2 + bf16"), "GAx2-bf16");
        assert_eq!(super::file_safe("--"), "");
    }
}
