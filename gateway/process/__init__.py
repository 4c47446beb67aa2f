"""Process-wide runtime tuning: the garbage collector and the event-loop lag sampler."""
