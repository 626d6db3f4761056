//! A look at a socket's receive side that neither blocks nor consumes: is the peer still
//! there, and has it sent anything?

use std::os::fd::AsRawFd;

/// What a non-blocking one-byte peek found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// Nothing to read: the peer is there and silent.
    Empty,
    /// At least one byte waits to be read.
    Data,
    /// The peer closed its end (and everything it sent has been read).
    Closed,
    /// The socket has an error (the peer reset the connection, say).
    Failed,
}

/// Peeks at `socket` with `recv(MSG_PEEK | MSG_DONTWAIT)`, whatever its blocking mode.
pub fn peek(socket: &impl AsRawFd) -> Peek {
    match first_byte(socket) {
        Ok(_) => Peek::Data,
        Err(p) => p,
    }
}

/// The first byte waiting on `socket`, left there (what kind of client it is); otherwise
/// what the peek found.
pub fn first_byte(socket: &impl AsRawFd) -> Result<u8, Peek> {
    let mut byte = 0u8;
    // SAFETY: the descriptor belongs to `socket`, which is borrowed for the call, and the
    // buffer is one valid byte on the stack.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        1 => Ok(byte),
        0 => Err(Peek::Closed),
        _ => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Err(Peek::Empty),
            _ => Err(Peek::Failed),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        net::{TcpListener, TcpStream},
        time::Duration,
    };

    use super::*;

    /// Waits until the peer's last action has reached `socket`.
    fn settle() {
        std::thread::sleep(Duration::from_millis(20));
    }

    #[test]
    fn a_peek_tells_silence_data_close_and_reset_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(peek(&server), Peek::Empty);
        assert_eq!(first_byte(&server), Err(Peek::Empty));
        (&client).write_all(b"x").unwrap();
        settle();
        // Peeking consumes nothing.
        assert_eq!(peek(&server), Peek::Data);
        assert_eq!(first_byte(&server), Ok(b'x'));
        assert_eq!(peek(&server), Peek::Data);
        drop(client);
        settle();
        assert_eq!(
            peek(&server),
            Peek::Data,
            "unread data comes before the close"
        );
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        settle();
        assert_eq!(peek(&server), Peek::Closed);
        assert_eq!(first_byte(&server), Err(Peek::Closed));
        // SO_LINGER 0: the close is a reset.
        let client = socket2::Socket::from(TcpStream::connect(addr).unwrap());
        let (server, _) = listener.accept().unwrap();
        client.set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        settle();
        assert_eq!(peek(&server), Peek::Failed);
    }
}
