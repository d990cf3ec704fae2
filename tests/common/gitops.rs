//! Runs the Argo CD health check (`docs/gitops/argocd-health.lua`) with a real Lua 5.1
//! interpreter on an object, as Argo CD does: the object is the global `obj`, the script returns
//! `{status, message}`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

pub const SCRIPT: &str = "docs/gitops/argocd-health.lua";

/// The interpreter: `lua5.1` (hack/deps.sh installs it), which Argo CD's gopher-lua follows.
fn lua() -> &'static str {
    let found = Command::new("lua5.1").arg("-v").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "lua5.1 is missing: run hack/deps.sh (make test does)"
    );
    "lua5.1"
}

/// A Lua 5.1 string literal: printable ASCII as is, every other byte as a decimal escape.
fn string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// A Lua literal of a JSON value.
fn literal(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", string(k), literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `(status, message)` of the health check for `obj`.
pub fn argocd_health(obj: &Value) -> (String, String) {
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT))
        .expect("health check script");
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{script}\nend)()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        literal(obj)
    );
    let out = Command::new(lua())
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(program.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run lua");
    assert!(
        out.status.success(),
        "health check failed in Lua: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}
