//! The streaming state machine behind [`ToolCallStream`].

use serde_json::Value;

use super::markup::{valid_name, Body, Markup, ToolCallParser};

/// Longest call header (type and name) before the text is taken for
/// something other than a call.
const MAX_HEADER_BYTES: usize = 512;

/// One piece of a tool call, as OpenAI streams it: the first piece of each
/// call carries its name, later ones only argument text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Position of the call in the choice's list of calls.
    pub index: u32,
    /// The function name, in the call's first piece only.
    pub name: Option<String>,
    /// More of the JSON arguments (possibly empty).
    pub arguments: String,
}

/// What one [`ToolCallStream::push`] or [`ToolCallStream::finish`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedText {
    /// Text that is content (it is not part of any call).
    pub content: String,
    /// Pieces of tool calls, in order.
    pub calls: Vec<ToolCallDelta>,
}

impl ParsedText {
    /// Appends an argument fragment to the last call piece when it belongs
    /// to the same call, so a push yields one piece per call.
    fn push_arguments(&mut self, index: u32, fragment: &str) {
        if fragment.is_empty() {
            return;
        }
        match self.calls.last_mut() {
            Some(last) if last.index == index => last.arguments.push_str(fragment),
            _ => self.calls.push(ToolCallDelta {
                index,
                name: None,
                arguments: fragment.to_string(),
            }),
        }
    }

    fn push_call(&mut self, index: u32, name: &str, arguments: String) {
        self.calls.push(ToolCallDelta {
            index,
            name: Some(name.to_string()),
            arguments,
        });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Content, until an opener.
    Text,
    /// Inside the block of calls, between calls: text is dropped.
    Between,
    /// After `call_open`, reading the header.
    Header,
    /// Reading the arguments; `started` once a non-blank byte was emitted.
    Args { started: bool },
    /// Dropping text up to the end of the call (the rest of a DeepSeek call
    /// after its fence, or a call refused because parallel calls are off).
    Skip,
}

/// Splits one choice's streamed answer into content and tool calls.
///
/// Markers may arrive split over any number of deltas; text that could be
/// the start of a marker is held back until it is decided. Blank text right
/// before a call is dropped, so content that only separates calls from
/// nothing becomes no content at all. A call whose header or JSON does not
/// parse stays content when it is the first, and is dropped after a
/// successful call (text between calls is not content, as in vLLM).
#[derive(Clone, Debug)]
pub struct ToolCallStream {
    markup: Option<&'static Markup>,
    stage: Stage,
    /// Undecided text.
    pending: String,
    /// Bytes at the start of `pending` already known not to begin the
    /// marker being looked for, so no byte is searched twice.
    scanned: usize,
    /// Calls started so far.
    calls: u32,
    parallel: bool,
}

impl ToolCallStream {
    /// A stream for `parser`'s format; with `parallel` false, calls after
    /// the first are dropped (OpenAI's `parallel_tool_calls: false`).
    pub fn new(parser: ToolCallParser, parallel: bool) -> Self {
        Self {
            markup: parser.markup(),
            stage: Stage::Text,
            pending: String::new(),
            scanned: 0,
            calls: 0,
            parallel,
        }
    }

    /// Number of calls found so far.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// Feeds one text delta.
    pub fn push(&mut self, text: &str) -> ParsedText {
        let mut out = ParsedText::default();
        let Some(markup) = self.markup else {
            out.content.push_str(text);
            return out;
        };
        self.pending.push_str(text);
        while self.step(markup, &mut out) {}
        out
    }

    /// Ends the stream: text held back is released, an unfinished DeepSeek
    /// call keeps what arguments it had, and an unfinished Hermes call is
    /// read if its JSON is complete.
    pub fn finish(&mut self) -> ParsedText {
        let mut out = ParsedText::default();
        let pending = std::mem::take(&mut self.pending);
        let Some(markup) = self.markup else {
            return out;
        };
        match self.stage {
            Stage::Text => out.content = pending,
            Stage::Between | Stage::Skip => {}
            Stage::Header => self.malformed(markup, &pending, "", &mut out),
            Stage::Args { started } => match markup.body {
                Body::Streamed => {
                    let fragment = pending.trim_end();
                    let fragment = if started {
                        fragment
                    } else {
                        fragment.trim_start()
                    };
                    out.push_arguments(self.calls.saturating_sub(1), fragment);
                }
                Body::Json => self.json_call(markup, &pending, "", &mut out),
            },
        }
        self.stage = Stage::Between;
        out
    }

    /// Advances by at most one marker; false when more text is needed.
    fn step(&mut self, markup: &'static Markup, out: &mut ParsedText) -> bool {
        match self.stage {
            Stage::Text => match self.find_any(markup.openers) {
                Some((pos, opener)) => {
                    out.content.push_str(self.pending[..pos].trim_end());
                    self.consume(pos + opener.len());
                    self.stage = if opener == markup.call_open {
                        self.open_call(markup)
                    } else {
                        Stage::Between
                    };
                    true
                }
                None => {
                    let safe = self.pending.len() - partial_marker(&self.pending, markup.openers);
                    let emit = self.pending[..safe].trim_end().len();
                    out.content.push_str(&self.pending[..emit]);
                    self.consume(emit);
                    false
                }
            },
            Stage::Between => match self.find_any(&[markup.call_open]) {
                Some((pos, opener)) => {
                    self.consume(pos + opener.len());
                    self.stage = self.open_call(markup);
                    true
                }
                None => self.drop_undecided(&[markup.call_open]),
            },
            Stage::Header => match self.find_any(&[markup.header_end]) {
                Some((pos, end)) => {
                    let header = self.pending[..pos].to_string();
                    self.consume(pos + end.len());
                    match (markup.name)(&header) {
                        Some(name) => {
                            out.push_call(self.calls, name, String::new());
                            self.calls += 1;
                            self.stage = Stage::Args { started: false };
                        }
                        None => self.malformed(markup, &header, end, out),
                    }
                    true
                }
                None if self.pending.len() > MAX_HEADER_BYTES => {
                    let header = std::mem::take(&mut self.pending);
                    self.scanned = 0;
                    self.malformed(markup, &header, "", out);
                    true
                }
                None => false,
            },
            Stage::Args { started } => match self.find_any(&[markup.args_end]) {
                Some((pos, end)) => {
                    let body = self.pending[..pos].to_string();
                    self.consume(pos + end.len());
                    match markup.body {
                        Body::Streamed => {
                            let fragment = body.trim_end();
                            let fragment = if started {
                                fragment
                            } else {
                                fragment.trim_start()
                            };
                            out.push_arguments(self.calls - 1, fragment);
                            self.stage = if markup.call_close.is_empty() {
                                Stage::Between
                            } else {
                                Stage::Skip
                            };
                        }
                        Body::Json => {
                            self.json_call(markup, &body, end, out);
                            self.stage = if self.stage == Stage::Text {
                                Stage::Text
                            } else {
                                Stage::Between
                            };
                        }
                    }
                    true
                }
                None => {
                    if markup.body == Body::Streamed {
                        self.stream_arguments(markup, started, out);
                    }
                    false
                }
            },
            Stage::Skip => match self.find_any(&[markup.close()]) {
                Some((pos, end)) => {
                    self.consume(pos + end.len());
                    self.stage = Stage::Between;
                    true
                }
                None => self.drop_undecided(&[markup.close()]),
            },
        }
    }

    /// The stage after `call_open`: a header to read, the arguments
    /// directly, or nothing when the call is one too many.
    fn open_call(&self, markup: &Markup) -> Stage {
        if !self.parallel && self.calls > 0 {
            Stage::Skip
        } else if markup.header_end.is_empty() {
            Stage::Args { started: false }
        } else {
            Stage::Header
        }
    }

    /// Emits the arguments that can no longer be part of `args_end`,
    /// holding back trailing blanks (the text before the closing fence is
    /// trimmed) and dropping leading ones.
    fn stream_arguments(&mut self, markup: &Markup, started: bool, out: &mut ParsedText) {
        if !started {
            let blank = self.pending.len() - self.pending.trim_start().len();
            self.consume(blank);
        }
        let safe = self.pending.len() - partial_marker(&self.pending, &[markup.args_end]);
        let emit = self.pending[..safe].trim_end().len();
        if emit > 0 {
            let fragment = self.pending[..emit].to_string();
            self.consume(emit);
            out.push_arguments(self.calls - 1, &fragment);
            self.stage = Stage::Args { started: true };
        }
    }

    /// Reads a Hermes call body `{"name": …, "arguments": …}`.
    fn json_call(&mut self, markup: &Markup, body: &str, end: &str, out: &mut ParsedText) {
        let parsed = serde_json::from_str::<Value>(body).ok().and_then(|v| {
            let name = valid_name(v.get("name")?.as_str()?)?.to_string();
            let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
                None | Some(Value::Null) => "{}".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            Some((name, arguments))
        });
        match parsed {
            Some((name, arguments)) => {
                out.push_call(self.calls, &name, arguments);
                self.calls += 1;
            }
            None => self.malformed(markup, body, end, out),
        }
    }

    /// A call that does not parse: content when no call came before it
    /// (back to [`Stage::Text`]), dropped otherwise.
    fn malformed(&mut self, markup: &Markup, text: &str, end: &str, out: &mut ParsedText) {
        if self.calls == 0 {
            out.content.push_str(markup.call_open);
            out.content.push_str(text);
            out.content.push_str(end);
            self.stage = Stage::Text;
        } else {
            self.stage = Stage::Between;
        }
    }

    /// Drops undecided text except a possible start of `markers`.
    fn drop_undecided(&mut self, markers: &[&str]) -> bool {
        let keep = partial_marker(&self.pending, markers);
        self.consume(self.pending.len() - keep);
        false
    }

    /// Removes `n` bytes from the front of `pending`.
    fn consume(&mut self, n: usize) {
        self.pending.drain(..n);
        self.scanned = self.scanned.saturating_sub(n);
    }

    /// The earliest of `markers` in `pending`, searching only bytes not
    /// searched before; remembers how far the search got.
    fn find_any(&mut self, markers: &[&'static str]) -> Option<(usize, &'static str)> {
        let from = floor_boundary(&self.pending, self.scanned);
        let found = markers
            .iter()
            .filter(|m| !m.is_empty())
            .filter_map(|m| self.pending[from..].find(m).map(|pos| (from + pos, *m)))
            .min_by_key(|&(pos, _)| pos);
        if found.is_none() {
            let longest = markers.iter().map(|m| m.len()).max().unwrap_or(1);
            let longest = longest.max(self.markup.map_or(1, Markup::longest_marker));
            self.scanned = self.pending.len().saturating_sub(longest);
        }
        found
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of one of
/// `markers`: text that may still become a marker.
fn partial_marker(text: &str, markers: &[&str]) -> usize {
    markers
        .iter()
        .filter_map(|marker| {
            (1..marker.len().min(text.len() + 1))
                .rev()
                .find(|&k| marker.is_char_boundary(k) && text.ends_with(&marker[..k]))
        })
        .max()
        .unwrap_or(0)
}

/// `index` moved back to a character boundary of `text`.
fn floor_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}
