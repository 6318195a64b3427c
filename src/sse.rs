//! Server-Sent Events, read incrementally: bytes in as they arrive, whole events out.
//!
//! The WHATWG rules that matter for a change stream: lines end in LF, CR or CRLF (a CRLF split
//! across two chunks is one ending); a line starting with `:` is a comment; `field: value` loses
//! one space after the colon; `data` lines join with LF; a blank line ends the event; an event
//! with no `data` is not dispatched; `id` holding NUL is ignored. Lines are capped, so a server
//! that never ends a line cannot grow the buffer without bound.

/// The longest line accepted (an event's data is capped at the same size).
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:`; `message` when the server named none.
    pub(crate) event: String,
    pub(crate) data: String,
    /// The last `id:` seen on this stream (ids persist across events, per the spec).
    pub(crate) id: Option<String>,
    /// Whether this event's own lines set `id` (else `id` is an earlier event's).
    pub(crate) id_here: bool,
}

/// A line or an event's data outgrew [`MAX_LINE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event stream sent a line or event over {MAX_LINE} bytes")]
pub(crate) struct TooLong;

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in CR: an LF opening the next one belongs to that line ending.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
    id_here: bool,
}

impl SseParser {
    /// Feeds one chunk; the events it completes are pushed to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), TooLong> {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.push(&rest[..end])?;
            let line = std::mem::take(&mut self.line);
            self.line(&line, out)?;
            self.line = line;
            self.line.clear();
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[end + 1..];
            }
        }
        self.push(rest)
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), TooLong> {
        if self.line.len() + bytes.len() > MAX_LINE {
            self.line.clear();
            return Err(TooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), TooLong> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_LINE {
                    self.reset_event();
                    return Err(TooLong);
                }
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_owned());
                self.id_here = true;
            }
            // `retry` and unknown fields: the reconnection policy is the client's own.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            let mut data = std::mem::take(&mut self.data);
            data.pop();
            let event = match std::mem::take(&mut self.event) {
                name if name.is_empty() => "message".to_owned(),
                name => name,
            };
            out.push(SseEvent {
                event,
                data,
                id: self.id.clone(),
                id_here: self.id_here,
            });
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        self.id_here = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).unwrap();
        }
        out
    }

    fn event(event: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id_here: id.is_some(),
            id: id.map(Into::into),
        }
    }

    #[test]
    fn the_relays_events_and_keep_alives() {
        let text =
            b": keep-alive\n\nevent: flags\nid: \"abc\"\ndata: {\"etag\":\"\\\"abc\\\"\"}\n\n";
        assert_eq!(
            parse_all(&[text]),
            [event(
                "flags",
                "{\"etag\":\"\\\"abc\\\"\"}",
                Some("\"abc\"")
            )]
        );
    }

    #[test]
    fn spec_rules() {
        // Multi-line data, no space after the colon, a field with no colon, CR and CRLF endings.
        let text = b"data:a\r\ndata: b\rdata\n\nevent: x\nid: 1\n\ndata: c\n\n";
        assert_eq!(
            parse_all(&[text]),
            // The event without data is not dispatched, but its id persists.
            [
                event("message", "a\nb\n", None),
                SseEvent {
                    id_here: false,
                    ..event("message", "c", Some("1"))
                }
            ]
        );
        // An id with NUL is ignored; a trailing event without its blank line is not dispatched.
        assert_eq!(
            parse_all(&[b"id: a\0b\ndata: d\n\ndata: e\n"]),
            [event("message", "d", None)]
        );
    }

    #[test]
    fn a_crlf_split_across_chunks_is_one_line_ending() {
        assert_eq!(
            parse_all(&[b"data: a\r", b"\n\r", b"\n"]),
            [event("message", "a", None)]
        );
    }

    #[test]
    fn an_endless_line_is_an_error_not_a_growing_buffer() {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        let chunk = vec![b'x'; 1024];
        let mut failed = false;
        for _ in 0..(MAX_LINE / 1024 + 2) {
            if parser.feed(&chunk, &mut out).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        assert!(parser.line.len() <= MAX_LINE);
        // Endless data lines, each short: the event's data is capped too.
        let mut parser = SseParser::default();
        let line = format!("data: {}\n", "y".repeat(1000));
        let result = (0..100).try_for_each(|_| parser.feed(line.as_bytes(), &mut out));
        assert_eq!(result, Err(TooLong));
    }

    proptest! {
        /// However a stream is cut into chunks, the same events come out.
        #[test]
        fn chunking_does_not_change_the_events(
            events in proptest::collection::vec(("[a-z]{0,8}", "[ -~]{0,40}", proptest::option::of("[a-z0-9]{1,8}")), 0..8),
            ending in 0usize..3,
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let mut text = Vec::new();
            // One style per stream: a CR then an LF-ended blank line would be one CRLF ending.
            let eol = |text: &mut Vec<u8>| {
                text.extend_from_slice([&b"\n"[..], b"\r", b"\r\n"][ending]);
            };
            for (name, data, id) in &events {
                text.extend_from_slice(b": comment");
                eol(&mut text);
                if !name.is_empty() {
                    text.extend_from_slice(format!("event: {name}").as_bytes());
                    eol(&mut text);
                }
                if let Some(id) = id {
                    text.extend_from_slice(format!("id: {id}").as_bytes());
                    eol(&mut text);
                }
                text.extend_from_slice(format!("data: {data}").as_bytes());
                eol(&mut text);
                eol(&mut text);
            }
            let whole = parse_all(&[&text]);
            prop_assert_eq!(whole.len(), events.len());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&text[start..cut]);
                start = cut;
            }
            chunks.push(&text[start..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }

        /// Arbitrary bytes never panic, and the buffer stays within its cap.
        #[test]
        fn any_bytes_are_safe(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut parser = SseParser::default();
            let mut out = Vec::new();
            for chunk in &chunks {
                let _ = parser.feed(chunk, &mut out);
                prop_assert!(parser.line.len() <= MAX_LINE);
            }
        }
    }
}
