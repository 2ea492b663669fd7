//! The `ip` commands that build and change the hosts' network: a bridge, a namespace per host,
//! a veth link from each to the bridge.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::HostsError;

/// The `ip` program: the first on `PATH`, else iproute2's usual place.
pub(crate) fn ip_program() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("ip"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| "/usr/sbin/ip".into())
}

/// Runs `ip` with `args`; the error names the command and what it said (in English: the
/// messages are read).
pub(crate) fn ip(args: &[&str]) -> Result<(), HostsError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new(ip_program())
        .env("LC_ALL", "C")
        .args(args)
        .output()
        .map_err(|err| HostsError::Command {
            command: command.clone(),
            message: err.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HostsError::Command {
            command,
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `ip` with `args` inside the namespace `netns`.
pub(crate) fn in_namespace(netns: &str, args: &[&str]) -> Result<(), HostsError> {
    let mut all = vec!["netns", "exec", netns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

/// A third octet `x` such that no interface of the machine has an address in 10.215.x.0/24,
/// trying from `seed` on.
pub(crate) fn free_subnet(seed: u32) -> Result<u8, HostsError> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map_err(|err| HostsError::NotPermitted(format!("ip -4 addr show: {err}")))?;
    let addresses = String::from_utf8_lossy(&output.stdout);
    (0..250u32)
        .filter_map(|step| u8::try_from((seed.wrapping_add(step)) % 250 + 1).ok())
        .find(|x| !addresses.contains(&format!(" 10.215.{x}.")))
        .ok_or(HostsError::NoSubnet)
}

/// Adds the bridge `name` with the machine's address `address`/24, up.
pub(crate) fn add_bridge(name: &str, address: Ipv4Addr) -> Result<(), HostsError> {
    ip(&["link", "add", name, "type", "bridge"]).map_err(|err| match err {
        HostsError::Command { command, message } if message.contains("perm") => {
            HostsError::NotPermitted(format!("{command}: {message}"))
        }
        other => other,
    })?;
    let configured = ip(&["addr", "add", &format!("{address}/24"), "dev", name])
        .and_then(|()| ip(&["link", "set", name, "up"]));
    if configured.is_err() {
        let _ = ip(&["link", "del", name]);
    }
    configured
}

/// Adds the namespace `netns`.
pub(crate) fn add_namespace(netns: &str) -> Result<(), HostsError> {
    ip(&["netns", "add", netns]).map_err(|err| match err {
        HostsError::Command { command, message } if message.contains("ermission") => {
            HostsError::NotPermitted(format!("{command}: {message}"))
        }
        other => other,
    })
}

/// Links the namespace `netns` to `bridge` (`inner` inside, `outer` on the bridge) and gives
/// it `address`/24; its loopback up too.
pub(crate) fn wire_host(
    netns: &str,
    inner: &str,
    outer: &str,
    bridge: &str,
    address: Ipv4Addr,
) -> Result<(), HostsError> {
    ip(&["link", "add", outer, "type", "veth", "peer", "name", inner])?;
    ip(&["link", "set", inner, "netns", netns])?;
    ip(&["link", "set", outer, "master", bridge])?;
    ip(&["link", "set", outer, "up"])?;
    in_namespace(
        netns,
        &["addr", "add", &format!("{address}/24"), "dev", inner],
    )?;
    in_namespace(netns, &["link", "set", inner, "up"])?;
    in_namespace(netns, &["link", "set", "lo", "up"])
}

/// Kills every process in the namespace `netns` (`SIGKILL`), and waits for none.
pub(crate) fn kill_all(netns: &str) {
    let Ok(output) = Command::new(ip_program())
        .args(["netns", "pids", netns])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
