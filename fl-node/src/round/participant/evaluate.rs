//! Scoring adopted models on the local test set, signed and gossiped as evaluations.

use super::*;

impl Participant {
    /// Says (and records) the evaluations that arrived for adopted rounds; forgets those
    /// of rounds no longer on this node's chain.
    pub(super) fn report_evaluations(
        &self,
        ctx: &Ctx,
        emit: &mut impl FnMut(&Event),
    ) -> Result<(), RoundError> {
        let waiting = std::mem::take(&mut *lock(&ctx.unevaluated));
        let mut still = Vec::new();
        for (round, cid, signer, model) in waiting {
            if self.rounds.adopted(&ctx.terms.cid, round)? != Some(cid) {
                continue;
            }
            let Some((at, e)) = ctx.inbox.evaluation(round, &cid, &signer, &model) else {
                still.push((round, cid, signer, model));
                continue;
            };
            self.rounds.record_evaluated(&ctx.terms.cid, round, &at)?;
            emit(&Event::Evaluated {
                round,
                manifest: cid.to_string(),
                accuracy: e.body.metrics.test_accuracy,
                loss: e.body.metrics.test_loss,
            });
        }
        lock(&ctx.unevaluated).extend(still);
        Ok(())
    }

    /// Scores the model of the manifest this node just published on the test set, off the
    /// round's path, and publishes the result signed (and re-publishes it).
    pub(super) fn spawn_evaluation(
        &self,
        ctx: &Ctx,
        manifest: Cid,
        round: u32,
        model: (Cid, Arc<Bundle>),
        test: Vec<Batch>,
    ) {
        let (arch, device) = (ctx.terms.architecture, self.config.backend.device());
        let (key, node, repo) = (self.key.clone(), self.node.clone(), self.repo.clone());
        let (inbox, republish, task) = (ctx.inbox.clone(), ctx.republish.clone(), ctx.terms.cid);
        spawn(async move {
            let started = Instant::now();
            let (model_cid, bundle) = model;
            let scored = blocking(move || {
                Classifier::new(arch, &bundle, &device)?.evaluate(&test, EVAL_BATCH)
            })
            .await;
            let eval = match scored {
                Ok(Ok(eval)) => eval,
                Ok(Err(e)) => return tracing::warn!(round, "evaluating the new model: {e}"),
                Err(e) => return tracing::warn!(round, "evaluating the new model: {e}"),
            };
            let record = Evaluation {
                task,
                round,
                manifest,
                model: model_cid,
                metrics: Metrics {
                    test_accuracy: eval.accuracy,
                    test_loss: eval.loss,
                },
            };
            let block = match Signed::sign(record, &key).and_then(|s| s.to_block()) {
                Ok(block) => block,
                Err(e) => return tracing::warn!(round, "signing the evaluation: {e}"),
            };
            let bytes = block.data().to_vec();
            if let Err(e) = inbox.file_evaluation(repo.blocks(), bytes.clone()) {
                return tracing::warn!(round, "filing our evaluation: {e}");
            }
            lock(&republish).evaluation = Some(bytes.clone());
            let _ = node.publish(&Task::evaluations_topic(&task), bytes).await;
            tracing::info!(
                round,
                accuracy = eval.accuracy,
                "published the evaluation of the round's model after {:.2} s",
                started.elapsed().as_secs_f64()
            );
        });
    }
}
