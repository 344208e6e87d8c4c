//! Secure aggregation end to end over every step's public messages: the exact sum, dropouts
//! up to the threshold and one past it, what one curious member (the aggregator included)
//! can learn, public verification, and members or aggregators that lie.

use fl_core::secagg::keys::{adds, apply_mask};
use fl_core::secagg::{
    Advert, Collector, Dealing, Kind, MaskedInput, Member, Params, Public, Reveal, SecAggError,
    SecureSum, Session, Slot, Survivors, unmask, verify,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const LEN: usize = 10_000;

/// Updates that look like a model's: a smooth pattern per member plus noise, within
/// `[-range, range]`.
fn updates(members: usize, range: f32, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..members)
        .map(|m| {
            (0..LEN)
                .map(|i| {
                    let pattern = ((i as f32) * 0.01 + m as f32).sin() * 0.6;
                    (pattern + rng.random_range(-0.3f32..0.3)) * range
                })
                .collect()
        })
        .collect()
}

/// A round up to the masked updates: members, their public messages.
struct Round {
    params: Params,
    session: Session,
    members: Vec<Member>,
    adverts: Vec<Advert>,
    dealings: Vec<Dealing>,
    inputs: Vec<MaskedInput>,
    updates: Vec<Vec<f32>>,
}

/// Runs keys and dealing.
fn dealt(members: u16, threshold: u16, seed: u64) -> Round {
    let params = Params::new(members, threshold, 1.0, 20).unwrap();
    let session = Session::new(b"bafy-task", 3);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (mut nodes, adverts): (Vec<Member>, Vec<Advert>) = (0..members)
        .map(|s| Member::new(params, session, Slot(s as u8), &mut rng).unwrap())
        .unzip();
    let dealings: Vec<Dealing> = nodes
        .iter_mut()
        .map(|m| {
            let (dealing, faults) = m.deal(&adverts).unwrap();
            assert!(faults.is_empty(), "{faults:?}");
            dealing
        })
        .collect();
    Round {
        params,
        session,
        members: nodes,
        adverts,
        dealings,
        inputs: Vec::new(),
        updates: updates(usize::from(members), 1.0, seed),
    }
}

/// Runs keys, dealing, opening and masking; members in `no_input` vanish after dealing
/// (they send no masked update).
fn round(members: u16, threshold: u16, no_input: &[u8], seed: u64) -> Round {
    open_and_mask(dealt(members, threshold, seed), |_, _| false, no_input)
}

/// Each member opens its shares of every dealing but those that `missed(member, dealer)`
/// says reached it too late, then masks its update, but the members in `no_input`.
fn open_and_mask(mut r: Round, missed: impl Fn(Slot, Slot) -> bool, no_input: &[u8]) -> Round {
    for m in &mut r.members {
        let seen: Vec<Dealing> = r
            .dealings
            .iter()
            .filter(|d| !missed(m.slot(), d.dealer))
            .cloned()
            .collect();
        let faults = m.open(&seen).unwrap();
        assert!(faults.is_empty(), "{faults:?}");
    }
    r.inputs = r
        .members
        .iter()
        .zip(&r.updates)
        .filter(|(m, _)| !no_input.contains(&m.slot().0))
        .map(|(m, u)| m.mask(u).unwrap())
        .collect();
    r
}

impl Round {
    fn public(&self) -> Public<'_> {
        Public {
            params: &self.params,
            session: &self.session,
            adverts: &self.adverts,
            inputs: &self.inputs,
            len: LEN,
        }
    }

    fn collect(&self) -> Collector {
        let mut collector = Collector::default();
        for input in &self.inputs {
            collector
                .offer(&self.params, &self.session, input.clone(), LEN)
                .unwrap();
        }
        collector
    }

    fn survivors(&self) -> Survivors {
        self.collect().survivors(&self.session, |_| true)
    }

    /// Answers from every member not in `silent`.
    fn answers(&mut self, survivors: &Survivors, silent: &[u8]) -> Vec<Reveal> {
        self.members
            .iter_mut()
            .filter(|m| !silent.contains(&m.slot().0))
            .map(|m| m.answer(survivors).unwrap())
            .collect()
    }

    /// Every member opens the dealings that reached it after it masked, for answering.
    fn hold_late(&mut self) {
        for m in &mut self.members {
            let faults = m.hold(&self.adverts, &self.dealings);
            assert!(faults.is_empty(), "{faults:?}");
        }
    }

    /// The exact integer sum of the survivors' quantised updates.
    fn plain_sum(&self, survivors: &Survivors) -> Vec<u32> {
        let q = self.params.quantiser();
        let mut sum = vec![0u32; LEN];
        for member in survivors.members() {
            let encoded = q.encode(&self.updates[usize::from(member.0)]).unwrap();
            for (s, e) in sum.iter_mut().zip(encoded) {
                *s += e;
            }
        }
        sum
    }
}

#[test]
fn ten_members_unmask_the_exact_integer_sum_and_a_mean_within_the_stated_bound() {
    let mut r = round(10, Params::default_threshold(10), &[], 1);
    assert_eq!(r.params.threshold, 7);
    let survivors = r.survivors();
    assert_eq!(survivors.inputs.len(), 10);
    let reveals = r.answers(&survivors, &[]);
    let unmasked = unmask(&r.public(), &r.dealings, &survivors, &reveals).unwrap();
    assert!(unmasked.faults.is_empty(), "{:?}", unmasked.faults);
    assert_eq!(unmasked.sum.values, r.plain_sum(&survivors));
    verify(&r.public(), &unmasked.sum).unwrap();

    let q = r.params.quantiser();
    let mean = q.mean(&unmasked.sum.values, 10);
    let worst = (0..LEN)
        .map(|i| {
            let truth = r.updates.iter().map(|u| f64::from(u[i])).sum::<f64>() / 10.0;
            (mean[i] - truth).abs()
        })
        .fold(0.0, f64::max);
    // Δ/2, and f64 rounding far below it.
    let bound = q.bound() * (1.0 + 1e-9);
    assert!(
        worst <= bound,
        "worst error {worst:e} over the bound {bound:e}"
    );
    assert!(worst > 0.0);
}

#[test]
fn up_to_the_threshold_of_members_may_vanish_and_the_sum_is_still_exact() {
    // Three vanish after dealing, before masking: their pairwise masks are removed with
    // their recovered mask keys.
    let mut r = round(10, 7, &[2, 5, 9], 2);
    let survivors = r.survivors();
    assert_eq!(survivors.dropped(), vec![Slot(2), Slot(5), Slot(9)]);
    let reveals = r.answers(&survivors, &[2, 5, 9]);
    let unmasked = unmask(&r.public(), &r.dealings, &survivors, &reveals).unwrap();
    assert_eq!(unmasked.sum.values, r.plain_sum(&survivors));
    assert_eq!(unmasked.sum.mask_keys.len(), 3);
    verify(&r.public(), &unmasked.sum).unwrap();

    // Three vanish after sending their masked updates: they are summed, and the seven who
    // answer recover all ten seeds.
    let mut r = round(10, 7, &[], 3);
    let survivors = r.survivors();
    let reveals = r.answers(&survivors, &[0, 4, 8]);
    let unmasked = unmask(&r.public(), &r.dealings, &survivors, &reveals).unwrap();
    assert_eq!(unmasked.sum.values, r.plain_sum(&survivors));
    verify(&r.public(), &unmasked.sum).unwrap();
}

#[test]
fn one_more_dropout_than_tolerated_and_the_round_refuses_to_unmask() {
    // Four vanish before masking: six survivors, seven needed. No member answers the
    // list, so nothing is revealed, and the aggregator cannot unmask.
    let mut r = round(10, 7, &[1, 3, 5, 7], 4);
    let survivors = r.survivors();
    let refusal = SecAggError::TooFewSurvivors {
        survivors: 6,
        threshold: 7,
    };
    for m in r.members.iter_mut() {
        assert_eq!(m.answer(&survivors).unwrap_err(), refusal);
    }
    assert_eq!(
        unmask(&r.public(), &r.dealings, &survivors, &[]).unwrap_err(),
        refusal
    );
    assert!(refusal.to_string().contains("refuses to unmask"));

    // Four vanish after masking: ten survivors but six answers, so no seed can be
    // recovered; the answers revealed less than a threshold of shares of any secret.
    let mut r = round(10, 7, &[], 5);
    let survivors = r.survivors();
    let reveals = r.answers(&survivors, &[0, 1, 2, 3]);
    match unmask(&r.public(), &r.dealings, &survivors, &reveals) {
        Err(SecAggError::TooFewShares {
            kind: Kind::Seed,
            valid: 6,
            threshold: 7,
            ..
        }) => {}
        other => panic!("expected too few shares, got {other:?}"),
    }
}

/// Pearson correlation of two vectors of ring elements, read as integers.
fn correlation(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len() as f64;
    let mean = |v: &[u32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(*x) - ma, f64::from(*y) - mb);
        ab += dx * dy;
        aa += dx * dx;
        bb += dy * dy;
    }
    ab / (aa * bb).sqrt()
}

/// What `observer` can strip from `target`'s masked update with everything it saw: the
/// revealed seed, its own pairwise mask, and the masks of dropped members; the
/// `colluders`' pairwise masks too, when they pool their keys.
fn stripped(
    r: &Round,
    sum: &SecureSum,
    observer: usize,
    colluders: &[usize],
    target: Slot,
) -> Vec<u32> {
    let ring_bits = r.params.ring_bits();
    let input = r.inputs.iter().find(|i| i.member == target).unwrap();
    let mut values = input.values.clone();
    let seed = sum.seeds.iter().find(|s| s.dealer == target).unwrap();
    apply_mask(&mut values, &seed.share, ring_bits, false);
    for &m in std::iter::once(&observer).chain(colluders) {
        let member = &r.members[m];
        if member.slot() == target {
            continue;
        }
        let pair = member.pair_seed(target).unwrap();
        apply_mask(&mut values, &pair, ring_bits, !adds(target, member.slot()));
    }
    values
}

#[test]
fn a_curious_member_or_the_aggregator_learns_nothing_of_another_members_update() {
    let mut r = round(10, 7, &[], 6);
    let survivors = r.survivors();
    let reveals = r.answers(&survivors, &[]);
    // Member 0 aggregates: it sees every public message, every answer, and its own keys.
    let unmasked = unmask(&r.public(), &r.dealings, &survivors, &reveals).unwrap();
    let q = r.params.quantiser();
    let noise_level = 4.0 / (LEN as f64).sqrt();
    for observer in [0usize, 4] {
        for target in (0..10u8).map(Slot).filter(|t| usize::from(t.0) != observer) {
            let truth = q.encode(&r.updates[usize::from(target.0)]).unwrap();
            let input = r.inputs.iter().find(|i| i.member == target).unwrap();
            // The masked update alone, and all the observer can strip from it.
            let alone = correlation(&input.values, &truth);
            let best = correlation(&stripped(&r, &unmasked.sum, observer, &[], target), &truth);
            assert!(
                alone.abs() < noise_level && best.abs() < noise_level,
                "observer {observer}, {target}: correlation {alone:.4} alone, {best:.4} stripped (noise level {noise_level:.4})"
            );
        }
    }
    // The analysis can see a leak: when every other member pools its keys (far past the
    // protocol's collusion bound), the update comes out whole.
    let all: Vec<usize> = (1..10).collect();
    let target = Slot(3);
    let truth = q.encode(&r.updates[3]).unwrap();
    let leaked = stripped(&r, &unmasked.sum, 0, &all, target);
    assert_eq!(leaked, truth);
    assert!(correlation(&leaked, &truth) > 0.99);

    // Masked values are uniform on the ring: each of 16 bins of their top bits holds
    // 1/16 of them (chi-square, 15 degrees of freedom, well under its 0.1% point 37.7).
    let top = r.params.ring_bits() - 4;
    for input in &r.inputs {
        let mut bins = [0f64; 16];
        for v in &input.values {
            bins[(v >> top) as usize] += 1.0;
        }
        let expected = LEN as f64 / 16.0;
        let chi2: f64 = bins.iter().map(|b| (b - expected).powi(2) / expected).sum();
        assert!(chi2 < 37.7, "{}: chi-square {chi2:.1}", input.member);
    }
}

#[test]
fn anyone_recomputes_a_secure_sum_from_public_material_and_refuses_one_unit_off() {
    let mut r = round(10, 7, &[6], 7);
    let survivors = r.survivors();
    let reveals = r.answers(&survivors, &[6]);
    let sum = unmask(&r.public(), &r.dealings, &survivors, &reveals)
        .unwrap()
        .sum;
    verify(&r.public(), &sum).unwrap();

    let mut off = sum.clone();
    off.values[1234] = (off.values[1234] + 1) & ((1 << r.params.ring_bits()) - 1);
    assert!(matches!(
        verify(&r.public(), &off),
        Err(SecAggError::SumMismatch { index: 1234, .. })
    ));

    // A wrong seed is refused against the member's commitment before any arithmetic.
    let mut forged = sum.clone();
    forged.seeds[2].share[0] ^= 1;
    assert!(matches!(
        verify(&r.public(), &forged),
        Err(SecAggError::Inconsistent {
            kind: Kind::Seed,
            ..
        })
    ));
    // So is a dropped member's mask key that is not behind its advert.
    let mut forged = sum.clone();
    forged.mask_keys[0].share[5] ^= 1;
    assert!(matches!(
        verify(&r.public(), &forged),
        Err(SecAggError::Inconsistent {
            kind: Kind::MaskKey,
            ..
        })
    ));
    // And a sum that leaves a survivor's seed out.
    let mut short = sum.clone();
    short.seeds.pop();
    assert!(matches!(
        verify(&r.public(), &short),
        Err(SecAggError::Secrets { .. })
    ));
    // A survivor's masked update swapped after the list named it.
    let mut swapped = Round {
        inputs: r.inputs.clone(),
        ..round(10, 7, &[6], 7)
    };
    swapped.inputs[0].values[0] ^= 1;
    swapped.adverts = r.adverts.clone();
    assert!(matches!(
        verify(&swapped.public(), &sum),
        Err(SecAggError::Survivors { .. })
    ));
}

#[test]
fn a_share_that_does_not_match_its_commitment_is_named_and_left_out() {
    let mut r = round(10, 7, &[], 8);
    let survivors = r.survivors();
    let mut reveals = r.answers(&survivors, &[]);
    // Member 2 lies about its share of member 5's seed.
    let lie = reveals[2]
        .seeds
        .iter_mut()
        .find(|s| s.dealer == Slot(5))
        .unwrap();
    lie.share[0] ^= 0x80;
    let unmasked = unmask(&r.public(), &r.dealings, &survivors, &reveals).unwrap();
    assert_eq!(
        unmasked.faults,
        vec![SecAggError::ShareMismatch {
            dealer: Slot(5),
            holder: Slot(2),
            kind: Kind::Seed,
        }]
    );
    assert_eq!(unmasked.sum.values, r.plain_sum(&survivors));

    // A holder finds a share that does not match its dealer's commitment when opening,
    // and leaves that dealer out of its masks.
    let mut r = dealt(4, 3, 9);
    r.dealings[1].sealed[0].seed_commitment[0] ^= 1;
    let faults = r.members[0].open(&r.dealings).unwrap();
    assert_eq!(
        faults,
        vec![SecAggError::ShareMismatch {
            dealer: Slot(1),
            holder: Slot(0),
            kind: Kind::Seed
        }]
    );
    assert_eq!(
        r.members[0].mask(&r.updates[0]).unwrap().pairs,
        vec![Slot(0), Slot(2), Slot(3)]
    );
    // Shares sealed for someone else do not open.
    let mut r = dealt(4, 3, 9);
    let stolen = r.dealings[2].sealed[1].ciphertext.clone();
    r.dealings[2].sealed[0].ciphertext = stolen;
    assert_eq!(
        r.members[0].open(&r.dealings).unwrap(),
        vec![SecAggError::Sealed {
            dealer: Slot(2),
            holder: Slot(0)
        }]
    );
}

#[test]
fn malformed_or_equivocating_masked_updates_are_refused_and_the_sum_holds() {
    let mut r = round(10, 7, &[], 11);
    let mut collector = Collector::default();
    for input in &r.inputs {
        collector
            .offer(&r.params, &r.session, input.clone(), LEN)
            .unwrap();
    }
    let mut short = r.inputs[1].clone();
    short.values.pop();
    assert!(matches!(
        Collector::default().offer(&r.params, &r.session, short, LEN),
        Err(SecAggError::Length {
            member: Slot(1),
            expected: LEN,
            got,
        }) if got == LEN - 1
    ));
    let mut wide = r.inputs[1].clone();
    wide.values[17] = 1 << r.params.ring_bits();
    assert!(matches!(
        Collector::default().offer(&r.params, &r.session, wide, LEN),
        Err(SecAggError::OutOfRange {
            member: Slot(1),
            index: 17,
            ..
        })
    ));
    // Member 4 shows a second masked update to some peers.
    let other = r.members[4].mask(&vec![0.5; LEN]).unwrap();
    assert_ne!(other, r.inputs[4]);
    assert!(matches!(
        collector.offer(&r.params, &r.session, other, LEN),
        Err(SecAggError::Equivocation {
            member: Slot(4),
            ..
        })
    ));
    // The same update again is not an equivocation.
    collector
        .offer(&r.params, &r.session, r.inputs[4].clone(), LEN)
        .unwrap();
    // The equivocator is left out, its pairwise masks removed with its recovered key, and
    // the sum is exactly the other nine's.
    let survivors = collector.survivors(&r.session, |_| true);
    assert_eq!(survivors.dropped(), vec![Slot(4)]);
    let reveals = r.answers(&survivors, &[]);
    let unmasked = unmask(&r.public(), &r.dealings, &survivors, &reveals).unwrap();
    assert_eq!(unmasked.sum.values, r.plain_sum(&survivors));
    verify(&r.public(), &unmasked.sum).unwrap();
}

#[test]
fn a_member_answers_one_survivor_list_a_round() {
    let mut r = round(10, 7, &[], 12);
    let all = r.survivors();
    // An aggregator that shows member 9 as dropped to some and as a survivor to others
    // would gather both of its secrets: each member answers only the first list it sees.
    let mut without_9 = all.clone();
    without_9.inputs.retain(|s| s.member != Slot(9));
    let first = r.members[0].answer(&without_9).unwrap();
    assert!(first.mask_keys.iter().any(|k| k.dealer == Slot(9)));
    assert!(first.seeds.iter().all(|s| s.dealer != Slot(9)));
    assert_eq!(
        r.members[0].answer(&all).unwrap_err(),
        SecAggError::SecondSurvivorList
    );
    // The same list again is answered the same way.
    assert_eq!(r.members[0].answer(&without_9).unwrap(), first);
}

#[test]
fn settings_that_cannot_keep_the_guarantees_are_refused() {
    assert!(matches!(
        Params::new(10, 5, 1.0, 16),
        Err(SecAggError::Threshold { .. })
    ));
    assert!(matches!(
        Params::new(10, 11, 1.0, 16),
        Err(SecAggError::Threshold { .. })
    ));
    assert!(matches!(
        Params::new(1, 1, 1.0, 16),
        Err(SecAggError::Members { .. })
    ));
    assert!(matches!(
        Params::new(256, 200, 1.0, 16),
        Err(SecAggError::Members { .. })
    ));
    assert!(matches!(
        Params::new(10, 7, f64::NAN, 16),
        Err(SecAggError::Range { .. })
    ));
    assert!(matches!(
        Params::new(10, 7, 1.0, 0),
        Err(SecAggError::Bits { .. })
    ));
    assert_eq!(Params::default_threshold(3), 3);
    assert_eq!(Params::default_threshold(16), 11);
}

#[test]
fn a_masked_update_file_reads_back_and_an_oversized_one_is_refused_unread() {
    let r = round(3, 2, &[], 13);
    let bytes = r.inputs[1].to_bytes().unwrap();
    assert!(bytes.len() <= MaskedInput::max_file_len(LEN));
    // The values, and 29 bytes of member, pairs and framing.
    assert_eq!(bytes.len(), LEN * 4 + 29);
    assert_eq!(MaskedInput::from_bytes(&bytes, LEN).unwrap(), r.inputs[1]);
    assert!(matches!(
        MaskedInput::from_bytes(&bytes, LEN - 1000),
        Err(SecAggError::Decode { .. })
    ));
    assert!(matches!(
        MaskedInput::from_bytes(&bytes[..bytes.len() - 1], LEN),
        Err(SecAggError::Decode { .. })
    ));
}

#[test]
fn members_that_opened_different_dealings_are_summed_where_they_agree() {
    // Member 4's dealing reaches members 0 and 1 too late: they mask without it, while
    // members 2, 3 and 4 mask against all five.
    let missed = |member: Slot, dealer: Slot| member.0 < 2 && dealer == Slot(4);
    let mut r = open_and_mask(dealt(5, 4, 14), missed, &[]);
    // Member 4 disagrees with two members, the others with one each: it is left out, its
    // masks with members 2 and 3 removed with its recovered mask key.
    let survivors = r.survivors();
    let summed: Vec<Slot> = survivors.members().collect();
    assert_eq!(summed, [Slot(0), Slot(1), Slot(2), Slot(3)]);
    assert_eq!(survivors.dropped(), vec![Slot(4)]);
    // Answering, members 0 and 1 open the late shares: five holders of member 4's key.
    r.hold_late();
    let reveals = r.answers(&survivors, &[]);
    let unmasked = unmask(&r.public(), &r.dealings, &survivors, &reveals).unwrap();
    assert_eq!(unmasked.sum.values, r.plain_sum(&survivors));
    assert!(unmasked.sum.seeds.iter().all(|s| s.dealer != Slot(4)));
    verify(&r.public(), &unmasked.sum).unwrap();
    // A list that sums the two disagreeing members together is refused.
    let mut forced = survivors.clone();
    forced.inputs.push(fl_core::secagg::Survivor {
        member: Slot(4),
        input: r.inputs[4].digest(&r.session),
    });
    assert!(matches!(
        verify(
            &r.public(),
            &SecureSum {
                survivors: forced,
                ..unmasked.sum.clone()
            }
        ),
        Err(SecAggError::Survivors { .. } | SecAggError::Secrets { .. })
    ));
}

#[test]
fn two_members_that_never_masked_against_each_other_are_not_both_summed() {
    // Members 0 and 1 each miss the other's dealing: neither masks against the other. A
    // survivor must be masked against every other survivor (else, where its only other
    // masks are with dropped members, one curious survivor could strip it), so one of the
    // two is left out: the higher slot, on a tie.
    let missed = |member: Slot, dealer: Slot| {
        (member, dealer) == (Slot(0), Slot(1)) || (member, dealer) == (Slot(1), Slot(0))
    };
    let mut r = open_and_mask(dealt(5, 4, 15), missed, &[]);
    let survivors = r.survivors();
    let summed: Vec<Slot> = survivors.members().collect();
    assert_eq!(summed, [Slot(0), Slot(2), Slot(3), Slot(4)]);
    assert_eq!(survivors.considered.len(), 5);
    r.hold_late();
    let reveals = r.answers(&survivors, &[]);
    let unmasked = unmask(&r.public(), &r.dealings, &survivors, &reveals).unwrap();
    assert_eq!(unmasked.sum.values, r.plain_sum(&survivors));
    verify(&r.public(), &unmasked.sum).unwrap();
    // A list summing both is refused by anyone who checks it.
    let mut both = survivors.clone();
    both.inputs.insert(
        1,
        fl_core::secagg::Survivor {
            member: Slot(1),
            input: r.inputs[1].digest(&r.session),
        },
    );
    assert!(matches!(
        verify(
            &r.public(),
            &SecureSum {
                survivors: both,
                ..unmasked.sum.clone()
            }
        ),
        Err(SecAggError::Survivors { .. } | SecAggError::Secrets { .. })
    ));
}
