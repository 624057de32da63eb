//! Shared by the tests that build real namespaces.

/// True when the rig can run here. Otherwise: under CI=true a missing
/// capability is a failure (the CI runner is supposed to provide it),
/// elsewhere the test is skipped loudly.
pub fn rig_available(test: &str) -> bool {
    match netem::topology::preflight() {
        Ok(()) => true,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{test}: rig unavailable under CI: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

/// Tests in one binary run on parallel threads; timing measurements are
/// taken one at a time so they do not compete for the two cores.
#[allow(dead_code)] // used by the timing tests, not all binaries
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
