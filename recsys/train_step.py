"""The compiled training step of a DCN run, under any `tf.distribute` strategy.

Example:

>>> step = make_train_step(model, optimizer)
>>> loss = step(features, labels)
"""

import recsys  # noqa: F401  (selects tf_keras as tf.keras before TF loads)

import tensorflow as tf

# Under several replicas, embedding gradients (tf.IndexedSlices) of tables of
# at most this many bytes are all-reduced as dense tensors, which the
# strategy packs into few all-reduces; larger tables' are all-gathered as
# sparse slices, one collective per table. Measured with 2 workers on this
# machine (26 small tables; a standalone script of this step, batch 64):
# 13-25 ms per step dense, 174-580 ms sparse.
DENSE_ALLREDUCE_BYTES = 4 << 20


def learning_rate_of(train_config):
    """The Adam learning rate (a float or a schedule) of a `TrainConfig`."""
    tc = train_config
    if tc.lr_schedule == "constant":
        return tc.learning_rate
    if tc.lr_schedule == "cosine":
        return tf.keras.optimizers.schedules.CosineDecay(
            tc.learning_rate, decay_steps=tc.train_steps, alpha=0.0)
    raise ValueError(f"Unknown lr_schedule {tc.lr_schedule!r}.")


def make_train_step(model, optimizer, *, strategy=None, jit_compile=False,
                    step_counter=None, dense_allreduce_bytes=DENSE_ALLREDUCE_BYTES):
    """A compiled training step for a logit model.

    Each replica's loss is the sum of its per-example losses over the global
    batch size (its batch size times the replicas in sync: the replicas get
    equal batches), so that the all-reduced gradient is the gradient of the
    global batch mean.

    Args:
        model: a Keras model mapping features to logits (built under
            `strategy.scope()`).
        optimizer: a Keras optimizer (built or not).
        strategy: the `tf.distribute.Strategy` (None: the current one).
        jit_compile: compile each replica's step with XLA.
        step_counter: optional int64 `tf.Variable` incremented by each step.
        dense_allreduce_bytes: with several replicas, the sparse gradients
            of variables up to this size are densified before the
            all-reduce (see `DENSE_ALLREDUCE_BYTES`).

    Returns:
        A `tf.function` `(features, labels) -> loss` (per-replica values
        under a multi-replica strategy) that applies one update of the mean
        binary cross-entropy computed from FP32 logits, and returns that
        mean over the global batch.
    """
    strategy = strategy or tf.distribute.get_strategy()
    loss_fn = tf.keras.losses.BinaryCrossentropy(
        from_logits=True, reduction=tf.keras.losses.Reduction.NONE)
    variables = model.trainable_variables
    densify = [strategy.num_replicas_in_sync > 1 and
               v.shape.num_elements() * v.dtype.size <= dense_allreduce_bytes
               for v in variables]

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(features, training=True), tf.float32)
            per_example = loss_fn(labels[:, tf.newaxis], logits[:, tf.newaxis])
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, variables)
        grads = [tf.convert_to_tensor(g) if dense and isinstance(g, tf.IndexedSlices)
                 else g for g, dense in zip(grads, densify)]
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    def train_step(features, labels):
        losses = strategy.run(replica_step, args=(features, labels))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        if step_counter is not None:
            step_counter.assign_add(1)
        return loss

    return tf.function(train_step)
