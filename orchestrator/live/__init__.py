"""Live sessions: a prepared avatar streamed over WebRTC, lip-synced to speech as it arrives."""
