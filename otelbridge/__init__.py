"""otelbridge: Cartesia Line voice-agent calls as OpenTelemetry traces and metrics."""

__version__ = "0.1.0"
