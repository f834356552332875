//! systemd's notify protocol (`sd_notify(3)`): datagrams to `$NOTIFY_SOCKET`. Sends never block:
//! a full socket buffer drops the message (the next one carries the current state) instead of
//! stalling the runtime thread that sent it.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `message` (e.g. `READY=1`, `STATUS=…`) when started by systemd; silent otherwise.
pub fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let bytes = path.as_encoded_bytes();
    let _ = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux): the name after '@'.
        use std::os::linux::net::SocketAddrExt;
        match std::os::unix::net::SocketAddr::from_abstract_name(name) {
            Ok(addr) => socket.send_to_addr(message.as_bytes(), &addr),
            Err(e) => Err(e),
        }
    } else {
        socket.send_to(message.as_bytes(), &path)
    };
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process when
/// `WATCHDOG_PID` is set); `None` when there is no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_socket_does_not_block_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        // SAFETY of the env mutation: this test alone in the crate touches NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        let start = std::time::Instant::now();
        for _ in 0..10_000 {
            send("WATCHDOG=1");
        }
        assert!(start.elapsed() < Duration::from_secs(5), "sending blocked");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    }
}
