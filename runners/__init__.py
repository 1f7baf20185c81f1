"""Runner profiles (direct; Flink and Dataflow to come), local stack and template tooling."""
