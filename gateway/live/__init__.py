"""Live updates: the pub/sub subscriber, the relay, the router that decides where an update
goes, the fan-out to Socket.IO rooms and the heartbeat."""
