//! Majority voting over extracted answers (self-consistency, cons@k):
//! answers are grouped by their canonical vote key, so `0.5` and `\frac12`
//! are one vote; the most votes win, and a tie goes to the answer whose
//! first vote came first.

use super::answer::canonical;

/// The votes for one answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The canonical key votes are grouped by.
    pub key: String,
    /// The answer as its first voter wrote it.
    pub answer: String,
    pub votes: usize,
    /// The order of its first vote (a sample index).
    pub first: usize,
}

/// Votes, in the order their answers first appeared.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    candidates: Vec<Candidate>,
}

impl Tally {
    /// Adds a vote for `answer` (written as its voter wrote it) under
    /// `key`, cast by voter `order`.
    pub fn add(&mut self, key: &str, answer: &str, order: usize) {
        match self.candidates.iter_mut().find(|c| c.key == key) {
            Some(c) => {
                c.votes += 1;
                if order < c.first {
                    c.first = order;
                    c.answer = answer.to_owned();
                }
            }
            None => self.candidates.push(Candidate {
                key: key.to_owned(),
                answer: answer.to_owned(),
                votes: 1,
                first: order,
            }),
        }
    }

    /// Adds a vote for an extracted answer with no declared units or
    /// choices: its key is its canonical form.
    pub fn add_answer(&mut self, answer: &str, order: usize) {
        self.add(&canonical(answer, &[], false).vote_key(), answer, order);
    }

    /// The winner: most votes, ties to the earliest first vote; `None`
    /// without votes.
    pub fn winner(&self) -> Option<&Candidate> {
        self.candidates
            .iter()
            .max_by(|a, b| a.votes.cmp(&b.votes).then(b.first.cmp(&a.first)))
    }

    /// Every answer voted for, in order of first appearance.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_votes_win_and_ties_go_to_the_first_vote() {
        let mut tally = Tally::default();
        for (key, order) in [("3", 2), ("4", 0), ("3", 3), ("4", 1)] {
            tally.add(key, key, order);
        }
        assert_eq!(tally.winner().map(|c| c.key.as_str()), Some("4"));
        tally.add("3", "3", 4);
        assert_eq!(
            tally.winner().map(|c| (c.key.as_str(), c.votes)),
            Some(("3", 3))
        );
        assert_eq!(Tally::default().winner(), None);
    }

    #[test]
    fn equivalent_spellings_are_one_vote_under_the_first_spelling() {
        let mut tally = Tally::default();
        for (i, answer) in ["\\frac{1}{2}", "0.5", "1/2", "2"].iter().enumerate() {
            tally.add_answer(answer, i);
        }
        let winner = tally.winner().expect("votes");
        assert_eq!((winner.answer.as_str(), winner.votes), ("\\frac{1}{2}", 3));
        assert_eq!(tally.candidates().len(), 2);
    }
}
