SELECT last_sequence FROM projection_checkpoints WHERE projection = $1
