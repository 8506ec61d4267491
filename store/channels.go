package store

import (
	"context"
	"fmt"
	"time"
)

// Channel names the image auto-update moves the fleet to.
type Channel struct {
	Name, Image, UpdatedBy, Reason string
	UpdatedAt                      time.Time
}

// ChannelChange is one entry of a channel's history.
type ChannelChange struct {
	Name, Image, PreviousImage, SetBy, Reason string
	SetAt                                     time.Time
}

// SetChannel points channel name at image and records the change.
func (q *Q) SetChannel(ctx context.Context, name, image, by, reason string) (Channel, error) {
	var prev *string
	err := q.db.QueryRow(ctx, `SELECT image FROM channels WHERE name = $1 FOR UPDATE`, name).Scan(&prev)
	if err != nil && !isNoRows(err) {
		return Channel{}, fmt.Errorf("read channel %s: %w", name, err)
	}
	var c Channel
	err = q.db.QueryRow(ctx, `
		INSERT INTO channels (name, image, updated_by, reason) VALUES ($1, $2, $3, $4)
		ON CONFLICT (name) DO UPDATE SET image = EXCLUDED.image, updated_by = EXCLUDED.updated_by,
			reason = EXCLUDED.reason, updated_at = now()
		RETURNING name, image, updated_by, reason, updated_at`, name, image, by, reason).
		Scan(&c.Name, &c.Image, &c.UpdatedBy, &c.Reason, &c.UpdatedAt)
	if err != nil {
		return Channel{}, fmt.Errorf("set channel %s: %w", name, err)
	}
	if _, err := q.db.Exec(ctx, `INSERT INTO channel_history (name, image, previous_image, set_by, reason) VALUES ($1, $2, $3, $4, $5)`,
		name, image, prev, by, reason); err != nil {
		return Channel{}, fmt.Errorf("record history of channel %s: %w", name, err)
	}
	return c, nil
}

// GetChannel returns channel name.
func (q *Q) GetChannel(ctx context.Context, name string) (Channel, error) {
	var c Channel
	err := q.db.QueryRow(ctx, `SELECT name, image, updated_by, reason, updated_at FROM channels WHERE name = $1`, name).
		Scan(&c.Name, &c.Image, &c.UpdatedBy, &c.Reason, &c.UpdatedAt)
	if err != nil {
		if isNoRows(err) {
			return Channel{}, &NotFoundError{What: "channel", ID: name}
		}
		return Channel{}, fmt.Errorf("read channel %s: %w", name, err)
	}
	return c, nil
}

// ListChannels returns every channel by name.
func (q *Q) ListChannels(ctx context.Context) ([]Channel, error) {
	rows, err := q.db.Query(ctx, `SELECT name, image, updated_by, reason, updated_at FROM channels ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list channels: %w", err)
	}
	defer rows.Close()
	var out []Channel
	for rows.Next() {
		var c Channel
		if err := rows.Scan(&c.Name, &c.Image, &c.UpdatedBy, &c.Reason, &c.UpdatedAt); err != nil {
			return nil, fmt.Errorf("list channels: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// ChannelHistory returns the changes of channel name, newest first.
func (q *Q) ChannelHistory(ctx context.Context, name string, limit int) ([]ChannelChange, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := q.db.Query(ctx, `SELECT name, image, coalesce(previous_image, ''), set_by, reason, set_at
		FROM channel_history WHERE name = $1 ORDER BY id DESC LIMIT $2`, name, limit)
	if err != nil {
		return nil, fmt.Errorf("history of channel %s: %w", name, err)
	}
	defer rows.Close()
	var out []ChannelChange
	for rows.Next() {
		var c ChannelChange
		if err := rows.Scan(&c.Name, &c.Image, &c.PreviousImage, &c.SetBy, &c.Reason, &c.SetAt); err != nil {
			return nil, fmt.Errorf("history of channel %s: %w", name, err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
