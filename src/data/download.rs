//! (in progress: helper)
