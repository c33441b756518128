//! The PostgreSQL protocol spoken by hand over a blocking socket, for tests that need what
//! a driver hides: a client that stops reading, or reads a huge result without keeping it.

use std::net::TcpStream;

/// A raw protocol connection as `tester`, ready for a query.
pub fn started_up(port: u16) -> TcpStream {
    use std::io::Write;
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut startup = 196_608i32.to_be_bytes().to_vec();
    startup.extend_from_slice(b"user\0tester\0database\0changeflow\0\0");
    let mut message = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend_from_slice(&startup);
    socket.write_all(&message).expect("startup");
    while read_message(&mut socket).0 != b'Z' {}
    socket
}

/// Sends a simple-protocol query.
pub fn send_query(socket: &mut TcpStream, query: &str) {
    use std::io::Write;
    let mut message = vec![b'Q'];
    message.extend_from_slice(&((query.len() + 5) as i32).to_be_bytes());
    message.extend_from_slice(query.as_bytes());
    message.push(0);
    socket.write_all(&message).expect("query");
}

/// Reads one backend message: its type and body.
pub fn read_message(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    use std::io::Read;
    let mut head = [0u8; 5];
    socket.read_exact(&mut head).expect("message head");
    let length = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0; length - 4];
    socket.read_exact(&mut body).expect("message body");
    (head[0], body)
}

/// Reads a query's answer up to ReadyForQuery, keeping nothing: the number of rows, or the
/// error's text.
pub fn count_result_rows(socket: &mut TcpStream) -> Result<usize, String> {
    use std::io::{BufReader, Read};
    let mut reader = BufReader::with_capacity(1 << 16, socket);
    let mut rows = 0;
    let mut error = None;
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 5];
        reader.read_exact(&mut head).map_err(|e| format!("reading the answer: {e}"))?;
        let length = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        body.resize(length - 4, 0);
        reader.read_exact(&mut body).map_err(|e| format!("reading the answer: {e}"))?;
        match head[0] {
            b'D' => rows += 1,
            b'E' => error = Some(String::from_utf8_lossy(&body).into_owned()),
            b'Z' => return error.map_or(Ok(rows), Err),
            _ => {}
        }
    }
}
