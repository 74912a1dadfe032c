//! The HTTP, WebSocket and SSE API (being written).
