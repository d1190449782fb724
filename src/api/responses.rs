//! `POST /v1/responses`: OpenAI's Responses API over the chat route's
//! machinery. The request becomes a chat request
//! ([`ResponsesRequest::to_chat`]) that [`chat::submit`] checks, templates
//! and runs; its output is split as a chat's is (reasoning, answer, tool
//! calls) and returned as output items: a `reasoning` item with the
//! reasoning text, a `message` with the answer, a `function_call` per call.
//! Streamed, each item opens, grows by deltas and closes in OpenAI's event
//! sequence, between `response.created` and `response.completed`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::chat::{self, merge_tool_calls};
use super::error::{ApiError, Json};
use super::generation::{ChoiceUpdate, Generation};
use super::protocol::{
    response_item_id, unix_timestamp, warn_unknown_fields, DeltaToolCall, FinishReason, ItemStatus,
    OutputItem, OutputText, ReasoningText, ResponseObject, ResponseSettings, ResponseUsage,
    ResponsesRequest,
};
use super::sse::{named_event, sse_response};
use super::state::{AppState, ServedModel};

/// Handles `POST /v1/responses`.
pub async fn responses(
    State(state): State<AppState>,
    Json(request): Json<ResponsesRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let model = state.model()?;
    model.check_name(request.model.as_deref())?;
    warn_unknown_fields("/v1/responses", &request.unknown);
    let (chat, generation) = chat::submit(&state, &model, request.to_chat()?, arrived).await?;
    let reply = Reply {
        id: response_item_id("resp"),
        created_at: unix_timestamp(),
        model,
        settings: ResponseSettings::of(&request),
        include_reasoning: chat.include_reasoning,
    };
    if chat.params.stream {
        Ok(reply.stream(generation))
    } else {
        // Collected inside the handler future: a client that hangs up drops
        // it, and with it the generation, which aborts the engine request.
        reply.collect(generation).await
    }
}

/// What the response's parts share.
struct Reply {
    id: String,
    created_at: u64,
    model: Arc<ServedModel>,
    settings: ResponseSettings,
    include_reasoning: bool,
}

impl Reply {
    fn object(
        &self,
        finish: Option<FinishReason>,
        output: Vec<OutputItem>,
        usage: Option<ResponseUsage>,
    ) -> ResponseObject {
        let (status, incomplete_details) = match finish {
            None => ("in_progress", None),
            Some(FinishReason::Length) => {
                ("incomplete", Some(json!({"reason": "max_output_tokens"})))
            }
            Some(_) => ("completed", None),
        };
        ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created_at,
            status,
            incomplete_details,
            error: None,
            model: self.model.name.clone(),
            output,
            usage,
            settings: self.settings.clone(),
        }
    }

    async fn collect(self, mut generation: Generation) -> Result<Response, ApiError> {
        let mut reasoning = String::new();
        let mut content = String::new();
        let mut calls = Vec::new();
        let mut finish = None;
        while let Some(updates) = generation.next().await {
            for update in updates? {
                reasoning.push_str(&update.reasoning);
                content.push_str(&update.content);
                merge_tool_calls(&mut calls, update.tool_calls);
                finish = update.finish_reason.or(finish);
            }
        }
        let cut = finish == Some(FinishReason::Length);
        let status = |cut: bool| {
            if cut {
                ItemStatus::Incomplete
            } else {
                ItemStatus::Completed
            }
        };
        let thinking = generation.in_reasoning(0);
        let mut output = Vec::new();
        if self.include_reasoning && !reasoning.is_empty() {
            output.push(OutputItem::Reasoning {
                id: response_item_id("rs"),
                summary: Vec::new(),
                content: vec![ReasoningText::new(reasoning)],
                status: status(cut && thinking),
            });
        }
        // A reply that is only tool calls has no message, as OpenAI's.
        if !thinking && (!content.is_empty() || calls.is_empty()) {
            output.push(OutputItem::Message {
                id: response_item_id("msg"),
                role: "assistant",
                content: vec![OutputText::new(content)],
                status: status(cut),
            });
        }
        output.extend(calls.iter().map(OutputItem::call));
        let usage = Some(generation.usage().into());
        Ok(Json(self.object(finish.or(Some(FinishReason::Stop)), output, usage)).into_response())
    }

    fn stream(self, generation: Generation) -> Response {
        let mut events = Events {
            reply: self,
            sequence: 0,
            output: Vec::new(),
            open: None,
            finish: None,
        };
        let created = events.object(None, None);
        let opening = vec![
            events.frame("response.created", json!({"response": created})),
            events.frame("response.in_progress", json!({"response": created})),
        ];
        // Owning the generation in the stream's state ties the engine
        // request to the response body: a dropped body aborts it.
        let body = stream::unfold(Some((generation, events)), |state| async move {
            let (mut generation, mut events) = state?;
            match generation.next().await {
                Some(Ok(updates)) => {
                    let frames = updates
                        .into_iter()
                        .flat_map(|u| events.update(u))
                        .collect::<Vec<_>>();
                    Some((frames, Some((generation, events))))
                }
                Some(Err(error)) => Some((vec![events.error(&error)], None)),
                None => Some((events.finish(&generation), None)),
            }
        });
        sse_response(stream::iter(opening).chain(body.flat_map(stream::iter)))
    }
}

/// The item being streamed.
enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// The state of a streamed response: the items finished so far, the one
/// being streamed, and the next event's sequence number.
struct Events {
    reply: Reply,
    sequence: u64,
    output: Vec<OutputItem>,
    open: Option<Open>,
    finish: Option<FinishReason>,
}

impl Events {
    fn object(&self, finish: Option<FinishReason>, usage: Option<ResponseUsage>) -> Value {
        let object = self.reply.object(finish, self.output.clone(), usage);
        serde_json::to_value(object).unwrap_or(Value::Null)
    }

    /// One event: its fields with `type` and the next sequence number.
    fn frame(&mut self, kind: &str, mut fields: Value) -> Bytes {
        if let Some(map) = fields.as_object_mut() {
            map.insert("type".into(), kind.into());
            map.insert("sequence_number".into(), self.sequence.into());
        }
        self.sequence += 1;
        named_event(kind, &fields).unwrap_or_else(|e| self.error(&ApiError::internal(e)))
    }

    fn error(&mut self, error: &ApiError) -> Bytes {
        let body = error.body().error;
        let fields = json!({"type": "error", "code": body.code, "message": body.message,
                            "param": body.param, "sequence_number": self.sequence});
        self.sequence += 1;
        named_event("error", &fields).unwrap_or_else(|_| {
            Bytes::from_static(
                b"event: error\ndata: {\"type\":\"error\",\"message\":\"internal error\"}\n\n",
            )
        })
    }

    /// The events of one engine update.
    fn update(&mut self, update: ChoiceUpdate) -> Vec<Bytes> {
        let mut frames = Vec::new();
        if !update.reasoning.is_empty() && self.reply.include_reasoning {
            if !matches!(self.open, Some(Open::Reasoning { .. })) {
                frames.extend(self.close());
                let id = response_item_id("rs");
                let item = OutputItem::Reasoning {
                    id: id.clone(),
                    summary: Vec::new(),
                    content: Vec::new(),
                    status: ItemStatus::InProgress,
                };
                frames.extend(self.added(
                    &id,
                    item,
                    Some(json!({"type": "reasoning_text",
                                                                "text": ""})),
                ));
                self.open = Some(Open::Reasoning {
                    id,
                    text: String::new(),
                });
            }
            frames.push(self.delta("response.reasoning_text.delta", update.reasoning));
        }
        if !update.content.is_empty() {
            if !matches!(self.open, Some(Open::Message { .. })) {
                frames.extend(self.close());
                frames.extend(self.open_message());
            }
            frames.push(self.delta("response.output_text.delta", update.content));
        }
        for piece in update.tool_calls {
            frames.extend(self.call_piece(piece));
        }
        if update.finish_reason.is_some() {
            self.finish = update.finish_reason;
        }
        frames
    }

    /// Opens the answer's message item.
    fn open_message(&mut self) -> Vec<Bytes> {
        let id = response_item_id("msg");
        let item = OutputItem::Message {
            id: id.clone(),
            role: "assistant",
            content: Vec::new(),
            status: ItemStatus::InProgress,
        };
        let part = serde_json::to_value(OutputText::new(String::new())).ok();
        let frames = self.added(&id, item, part);
        self.open = Some(Open::Message {
            id,
            text: String::new(),
        });
        frames
    }

    /// `response.output_item.added` for a new item at the end of the
    /// output, and `response.content_part.added` for its first part.
    fn added(&mut self, id: &str, item: OutputItem, part: Option<Value>) -> Vec<Bytes> {
        let index = self.output.len();
        let mut frames = vec![self.frame(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        )];
        if let Some(part) = part {
            frames.push(self.frame(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            ));
        }
        frames
    }

    /// A text delta of the open reasoning or message.
    fn delta(&mut self, kind: &str, delta: String) -> Bytes {
        let index = self.output.len();
        let (id, text) = match &mut self.open {
            Some(Open::Reasoning { id, text } | Open::Message { id, text }) => (id.clone(), text),
            _ => return self.error(&ApiError::internal("a text delta with no open item")),
        };
        text.push_str(&delta);
        let mut fields = json!({"item_id": id, "output_index": index, "content_index": 0,
                                "delta": delta});
        if kind == "response.output_text.delta" {
            fields["logprobs"] = json!([]);
        }
        self.frame(kind, fields)
    }

    /// A streamed tool-call piece: the first of a call opens its item,
    /// the others add argument text.
    fn call_piece(&mut self, piece: DeltaToolCall) -> Vec<Bytes> {
        let mut frames = Vec::new();
        if let Some(call_id) = piece.id {
            frames.extend(self.close());
            let id = response_item_id("fc");
            let name = piece.function.name.unwrap_or_default();
            let item = OutputItem::FunctionCall {
                id: id.clone(),
                call_id: call_id.clone(),
                name: name.clone(),
                arguments: String::new(),
                status: ItemStatus::InProgress,
            };
            frames.extend(self.added(&id, item, None));
            self.open = Some(Open::Call {
                id,
                call_id,
                name,
                arguments: String::new(),
            });
        }
        let index = self.output.len();
        if let Some(Open::Call { id, arguments, .. }) = &mut self.open {
            if !piece.function.arguments.is_empty() {
                arguments.push_str(&piece.function.arguments);
                let fields = json!({"item_id": id, "output_index": index,
                                    "delta": piece.function.arguments});
                frames.push(self.frame("response.function_call_arguments.delta", fields));
            }
        }
        frames
    }

    /// Closes the open item: its `.done` events, and the item joins the
    /// output.
    fn close(&mut self) -> Vec<Bytes> {
        let index = self.output.len();
        let cut = self.finish == Some(FinishReason::Length);
        let status = if cut {
            ItemStatus::Incomplete
        } else {
            ItemStatus::Completed
        };
        let (item, frames) = match self.open.take() {
            None => return Vec::new(),
            Some(Open::Reasoning { id, text }) => {
                let part = ReasoningText::new(text.clone());
                let frames = vec![
                    self.frame(
                        "response.reasoning_text.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "text": text}),
                    ),
                    self.frame(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "part": part}),
                    ),
                ];
                let item = OutputItem::Reasoning {
                    id,
                    summary: Vec::new(),
                    content: vec![part],
                    status,
                };
                (item, frames)
            }
            Some(Open::Message { id, text }) => {
                let part = OutputText::new(text.clone());
                let frames = vec![
                    self.frame(
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "text": text, "logprobs": []}),
                    ),
                    self.frame(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "part": part}),
                    ),
                ];
                let item = OutputItem::Message {
                    id,
                    role: "assistant",
                    content: vec![part],
                    status,
                };
                (item, frames)
            }
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
            }) => {
                let frames = vec![self.frame(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name,
                           "arguments": arguments}),
                )];
                let item = OutputItem::FunctionCall {
                    id,
                    call_id,
                    name,
                    arguments,
                    status: ItemStatus::Completed,
                };
                (item, frames)
            }
        };
        let mut frames = frames;
        frames.push(self.frame(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.output.push(item);
        frames
    }

    /// The last item's `.done` events and `response.completed` with the
    /// whole response and its usage. A reply that left its reasoning with
    /// neither text nor calls still gets its (empty) message, as the
    /// non-streamed response does. A response cut at `max_output_tokens`
    /// ends with `response.completed` too, its status `incomplete`: the
    /// OpenAI SDK's stream helpers take their final response from that
    /// event only.
    fn finish(&mut self, generation: &Generation) -> Vec<Bytes> {
        let mut frames = self.close();
        let answered = self.output.iter().any(|item| {
            matches!(
                item,
                OutputItem::Message { .. } | OutputItem::FunctionCall { .. }
            )
        });
        if !answered && !generation.in_reasoning(0) {
            frames.extend(self.open_message());
            frames.extend(self.close());
        }
        let finish = self.finish.or(Some(FinishReason::Stop));
        let response = self.object(finish, Some(generation.usage().into()));
        frames.push(self.frame("response.completed", json!({"response": response})));
        frames
    }
}
