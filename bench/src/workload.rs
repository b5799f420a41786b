//! The W1 workload: users, a mix of direct and group conversations, and a
//! deterministic random stream of (conversation, sender) picks.

/// xorshift64*: deterministic, fast, good enough to pick workload items
/// (not for anything security related).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A random conversation of `(id, members)` and one of its members as the
/// sender, in the order every driver draws them (so a seed replays a load).
pub fn pick<'a>(rng: &mut Rng, conversations: &'a [(u64, Vec<u64>)]) -> (u64, &'a [u64], u64) {
    let (conversation_id, members) = &conversations[rng.below(conversations.len() as u64) as usize];
    let sender = members[rng.below(members.len() as u64) as usize];
    (*conversation_id, members, sender)
}

#[derive(Clone, Debug)]
pub struct Mix {
    pub users: u64,
    pub conversations: u64,
    pub direct_share: f64,
    pub small_group_share: f64,
    pub small_group_size: u64,
    pub large_group_size: u64,
}

/// Member lists for every conversation of the mix (user ids from 1).
pub fn conversations(mix: &Mix, rng: &mut Rng) -> Vec<Vec<u64>> {
    (0..mix.conversations)
        .map(|i| {
            let share = i as f64 / mix.conversations as f64;
            let size = if share < mix.direct_share {
                2
            } else if share < mix.direct_share + mix.small_group_share {
                mix.small_group_size
            } else {
                mix.large_group_size
            }
            .min(mix.users);
            let mut members = Vec::with_capacity(size as usize);
            while (members.len() as u64) < size {
                let user = rng.below(mix.users) + 1;
                if !members.contains(&user) {
                    members.push(user);
                }
            }
            members.sort_unstable();
            members
        })
        .collect()
}

/// Devices of the W1 users: each user has 1 to `max_devices` devices, and
/// each device is subscribed (holds a push stream) with probability
/// `subscribed_share`. Returns (user, device number) of the subscribed ones.
pub fn subscribed_devices(
    users: &[u64],
    max_devices: u64,
    subscribed_share: f64,
    rng: &mut Rng,
) -> Vec<(u64, u64)> {
    let mut subscribed = Vec::new();
    for &user in users {
        let devices = 1 + rng.below(max_devices.max(1));
        for device in 0..devices {
            // 2^-53 resolution is plenty for a share.
            let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if draw < subscribed_share {
                subscribed.push((user, device));
            }
        }
    }
    subscribed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_has_the_requested_shape() {
        let mix = Mix {
            users: 1_000,
            conversations: 100,
            direct_share: 0.7,
            small_group_share: 0.25,
            small_group_size: 20,
            large_group_size: 200,
        };
        let all = conversations(&mix, &mut Rng::new(7));
        assert_eq!(all.iter().filter(|m| m.len() == 2).count(), 70);
        assert_eq!(all.iter().filter(|m| m.len() == 20).count(), 25);
        assert_eq!(all.iter().filter(|m| m.len() == 200).count(), 5);
        assert!(all.iter().flatten().all(|&u| (1..=1_000).contains(&u)));
    }

    #[test]
    fn subscribed_devices_follow_the_share_and_device_counts() {
        let users: Vec<u64> = (1..=10_000).collect();
        let picked = subscribed_devices(&users, 3, 0.1, &mut Rng::new(7));
        // About 20,000 devices (1 to 3 each), a tenth of them subscribed.
        assert!((1_700..=2_300).contains(&picked.len()), "{}", picked.len());
        assert!(
            picked
                .iter()
                .all(|&(user, device)| (1..=10_000).contains(&user) && device < 3)
        );
        assert!(picked.iter().any(|&(_, device)| device == 2));
        assert!(subscribed_devices(&users, 3, 0.0, &mut Rng::new(7)).is_empty());
        assert_eq!(
            subscribed_devices(&users, 1, 1.0, &mut Rng::new(7)).len(),
            10_000
        );
    }
}
