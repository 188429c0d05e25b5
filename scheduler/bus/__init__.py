"""The WebSocket bus: connections and roles, dispatch, events."""
